//! The host side of the pod network that belongs to the whole cluster: the bridge every pod's
//! veth plugs into, and finding and removing everything carrying the devcluster's prefixes
//! (per-pod sandboxes are `net`'s business).

use std::fs;
use std::process::Command;

use crate::layout::{BRIDGE, BRIDGE_IP, NETNS_PREFIX, POD_NETWORK_PREFIX_LEN, VETH_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("could not run `ip` (Debian's iproute2)")]
    IpMissing(#[source] std::io::Error),
}

fn ip(args: &[&str]) -> Result<String, HostNetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(HostNetError::IpMissing)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(HostNetError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

/// Creates the bridge with the pods' gateway address, if it is not there yet.
pub fn ensure_bridge() -> Result<(), HostNetError> {
    if ip(&["link", "show", BRIDGE]).is_err() {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let addrs = ip(&["-o", "addr", "show", "dev", BRIDGE])?;
    if !addrs.contains(&format!("{BRIDGE_IP}/")) {
        ip(&[
            "addr",
            "add",
            &format!("{BRIDGE_IP}/{POD_NETWORK_PREFIX_LEN}"),
            "dev",
            BRIDGE,
        ])?;
    }
    ip(&["link", "set", BRIDGE, "up"])?;
    Ok(())
}

fn netns_names() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .collect()
}

fn links() -> Vec<String> {
    let out = ip(&["-o", "link", "show"]).unwrap_or_default();
    parse_link_names(&out)
        .into_iter()
        .filter(|n| n == BRIDGE || n.starts_with(VETH_PREFIX))
        .collect()
}

/// Link names from `ip -o link show` (`3: rdcv1234abcd@if2: <...`).
fn parse_link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Everything of the devcluster's still on the host network, as `kind name` strings.
pub fn leftovers() -> Vec<String> {
    let mut out: Vec<String> = netns_names()
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    out.extend(links().into_iter().map(|l| format!("link {l}")));
    out
}

/// Kills what runs in each devcluster netns, deletes the namespaces, the veths and the bridge.
pub fn teardown_all() {
    for ns in netns_names() {
        if let Ok(pids) = ip(&["netns", "pids", &ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                crate::procs::stop(pid, std::time::Duration::from_secs(2));
            }
        }
        let _ = ip(&["netns", "delete", &ns]);
    }
    for link in links() {
        let _ = ip(&["link", "delete", &link]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_from_ip_output() {
        let out = "1: lo: <LOOPBACK,UP> mtu 65536\n5: rdc0: <BROADCAST> mtu 1500\n7: rdcv0a1b2c3d@if6: <BROADCAST>\n";
        assert_eq!(parse_link_names(out), vec!["lo", "rdc0", "rdcv0a1b2c3d"]);
    }
}
