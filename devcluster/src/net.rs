//! Each pod's network: its "sandbox" (a network namespace plus a veth pair into the `rdc0`
//! bridge, the pod IP on `eth0`, a default route via the bridge) and the pod IP allocator. The
//! bridge itself, and removing everything at `down`, belong to [`crate::hostnet`].
//!
//! Everything goes through the `ip` command of iproute2, run with tokio's process API. The
//! commands are built as plain values (`*_commands` functions, unit-tested) apart from running
//! them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::hostnet::HostNetError;
use crate::layout::{BRIDGE, BRIDGE_IP, NETNS_PREFIX, POD_NETWORK_PREFIX_LEN, VETH_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("could not run `ip {args}` (is iproute2 installed?)")]
    RunIp {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    IpFailed { args: String, stderr: String },
    #[error("could not make the pod network bridge")]
    Bridge(#[source] HostNetError),
    #[error("the task making the pod network bridge died")]
    BridgeTask,
    #[error("the pod network {cidr} of node {node} has no free address left")]
    AddressesExhausted { node: String, cidr: String },
}

/// One pod's network: a namespace and the veth pair joining it to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: String,
    /// Host end, enslaved to the bridge.
    pub host_veth: String,
    /// Peer's name until it is moved into the namespace and renamed `eth0`. It carries the
    /// `rdcv` prefix too, so `teardown_all` finds it even if setup stopped half-way.
    pub peer_veth: String,
    pub ip: Ipv4Addr,
}

impl Sandbox {
    pub fn for_pod(uid: &str, ip: Ipv4Addr) -> Self {
        let id = short_id(uid);
        Sandbox {
            netns: netns_name(uid),
            host_veth: format!("{VETH_PREFIX}{id}"),
            peer_veth: format!("{VETH_PREFIX}{id}p"),
            ip,
        }
    }
}

/// 8 hex digits naming a pod's network objects; interface names are limited to 15 bytes, so the
/// uid itself does not fit. FNV-1a: stable across builds and runs, unlike std's hasher.
pub fn short_id(uid: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in uid.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The network namespace of the pod with this uid (`/var/run/netns/<name>`).
pub fn netns_name(uid: &str) -> String {
    format!("{NETNS_PREFIX}{}", short_id(uid))
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Builds a pod's network namespace, veth pair, address and default route.
pub fn sandbox_setup_commands(sb: &Sandbox) -> Vec<Vec<String>> {
    let ns = sb.netns.as_str();
    let addr = format!("{}/{POD_NETWORK_PREFIX_LEN}", sb.ip);
    vec![
        args(&["netns", "add", ns]),
        args(&[
            "link",
            "add",
            &sb.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &sb.peer_veth,
            "netns",
            ns,
        ]),
        args(&["link", "set", &sb.host_veth, "master", BRIDGE]),
        args(&["link", "set", &sb.host_veth, "up"]),
        args(&["-n", ns, "link", "set", &sb.peer_veth, "name", "eth0"]),
        args(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]),
        args(&["-n", ns, "link", "set", "eth0", "up"]),
        args(&["-n", ns, "link", "set", "lo", "up"]),
        args(&["-n", ns, "route", "add", "default", "via", BRIDGE_IP]),
    ]
}

/// Removes a sandbox; deleting the host veth removes its peer as well. Failures are expected when
/// parts are already gone, so callers run these best-effort.
pub fn sandbox_teardown_commands(sb: &Sandbox) -> Vec<Vec<String>> {
    vec![
        args(&["link", "del", &sb.host_veth]),
        args(&["netns", "del", &sb.netns]),
    ]
}

fn parse_pids(out: &str) -> Vec<i32> {
    out.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p > 1)
        .collect()
}

async fn ip(a: &[String]) -> Result<String, NetError> {
    let out = tokio::process::Command::new("ip")
        .args(a)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| NetError::RunIp {
            args: a.join(" "),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::IpFailed {
            args: a.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Builds a pod's sandbox. A sandbox of the same pod left by an earlier agent run is removed
/// first, so this can be retried.
pub async fn create_sandbox(sb: &Sandbox) -> Result<(), NetError> {
    let stale_link = std::path::Path::new("/sys/class/net")
        .join(&sb.host_veth)
        .exists();
    if netns_exists(&sb.netns) || stale_link {
        remove_sandbox(sb).await;
    }
    // `up` made the bridge; this only matters if someone removed it since.
    if !std::path::Path::new("/sys/class/net").join(BRIDGE).exists() {
        tokio::task::spawn_blocking(crate::hostnet::ensure_bridge)
            .await
            .map_err(|_| NetError::BridgeTask)?
            .map_err(NetError::Bridge)?;
    }
    let result = async {
        for c in sandbox_setup_commands(sb) {
            ip(&c).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        remove_sandbox(sb).await;
    }
    result
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}

/// Kills whatever still runs in the sandbox (the containers were stopped gracefully before) and
/// removes it. Best-effort and idempotent.
pub async fn remove_sandbox(sb: &Sandbox) {
    if let Ok(out) = ip(&args(&["netns", "pids", &sb.netns])).await {
        for p in parse_pids(&out) {
            // SAFETY: plain syscall; the pids are in this pod's own namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    for c in sandbox_teardown_commands(sb) {
        let _ = ip(&c).await;
    }
}

// ---- pod IP allocation ----

/// Hands out pod IPs from each node's /24 (10.244.i.0/24): never .0, .1 or .255, never an
/// address a live pod holds. A cursor per subnet makes a released address come back last, so a
/// stale Endpoints entry does not point at a new pod right away.
#[derive(Debug, Default)]
pub struct Ipam {
    held: BTreeMap<Ipv4Addr, String>,
    by_uid: HashMap<String, Ipv4Addr>,
    cursor: HashMap<[u8; 3], u8>,
}

/// The first three octets of a `a.b.c.0/24` CIDR.
pub fn parse_cidr24(cidr: &str) -> Option<[u8; 3]> {
    let (addr, len) = cidr.split_once('/')?;
    if len != "24" {
        return None;
    }
    let ip: Ipv4Addr = addr.parse().ok()?;
    let o = ip.octets();
    Some([o[0], o[1], o[2]])
}

impl Ipam {
    /// The address of pod `uid` in `cidr`: the one it already holds, else `preferred` if that is
    /// free and in range (a pod keeps its IP across agent restarts), else the next free one.
    pub fn allocate(
        &mut self,
        cidr: &str,
        uid: &str,
        preferred: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_uid.get(uid) {
            return Some(*ip);
        }
        let net = parse_cidr24(cidr)?;
        let usable = |host: u8| (2..=254).contains(&host);
        let pick = preferred
            .filter(|p| {
                p.octets()[..3] == net[..] && usable(p.octets()[3]) && !self.held.contains_key(p)
            })
            .or_else(|| {
                let start = self.cursor.get(&net).copied().unwrap_or(2);
                (0..253u16)
                    .map(|i| 2 + ((u16::from(start.max(2)) - 2 + i) % 253) as u8)
                    .map(|h| Ipv4Addr::new(net[0], net[1], net[2], h))
                    .find(|ip| !self.held.contains_key(ip))
            })?;
        let next = if pick.octets()[3] >= 254 {
            2
        } else {
            pick.octets()[3] + 1
        };
        self.cursor.insert(net, next);
        self.held.insert(pick, uid.to_string());
        self.by_uid.insert(uid.to_string(), pick);
        Some(pick)
    }

    pub fn release(&mut self, uid: &str) {
        if let Some(ip) = self.by_uid.remove(uid) {
            self.held.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits_and_carry_prefixes() {
        let sb = Sandbox::for_pod(
            "0b3c1f8e-5a55-4b6e-9a43-2f1f0c7e9d10",
            Ipv4Addr::new(10, 244, 1, 2),
        );
        assert!(sb.netns.starts_with("rdc-") && sb.netns.len() == 12);
        assert!(sb.host_veth.starts_with("rdcv") && sb.host_veth.len() <= 15);
        assert!(sb.peer_veth.starts_with("rdcv") && sb.peer_veth.len() <= 15);
        assert_ne!(sb.host_veth, sb.peer_veth);
    }

    #[test]
    fn short_id_is_stable_and_distinguishes_uids() {
        assert_eq!(short_id("a"), short_id("a"));
        assert_ne!(short_id("uid-1"), short_id("uid-2"));
        // FNV-1a of the empty string is the offset basis.
        assert_eq!(short_id(""), "811c9dc5");
    }

    #[test]
    fn setup_puts_the_pod_address_on_eth0_and_routes_via_the_bridge() {
        let sb = Sandbox::for_pod("u", Ipv4Addr::new(10, 244, 2, 7));
        let cmds: Vec<String> = sandbox_setup_commands(&sb)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(cmds[0], format!("netns add {}", sb.netns));
        assert!(cmds.contains(&format!("-n {} addr add 10.244.2.7/16 dev eth0", sb.netns)));
        assert!(cmds.contains(&format!("link set {} master rdc0", sb.host_veth)));
        assert_eq!(
            cmds.last().map(String::as_str),
            Some(format!("-n {} route add default via 10.244.0.1", sb.netns).as_str())
        );
    }

    #[test]
    fn pids_from_ip_netns_pids() {
        assert_eq!(parse_pids("123\n456\n1\nx\n"), vec![123, 456]);
    }

    #[test]
    fn cidr24_parsing() {
        for (cidr, want) in [
            ("10.244.3.0/24", Some([10, 244, 3])),
            ("10.244.3.0/16", None),
            ("nonsense", None),
            ("10.244.300.0/24", None),
        ] {
            assert_eq!(parse_cidr24(cidr), want, "{cidr}");
        }
    }

    #[test]
    fn allocation_skips_reserved_and_held_addresses() {
        let mut ipam = Ipam::default();
        let a = ipam.allocate("10.244.1.0/24", "a", None);
        let b = ipam.allocate("10.244.1.0/24", "b", None);
        assert_eq!(a, Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(b, Some(Ipv4Addr::new(10, 244, 1, 3)));
        // Idempotent per uid.
        assert_eq!(ipam.allocate("10.244.1.0/24", "a", None), a);
        // Another node's subnet is independent.
        assert_eq!(
            ipam.allocate("10.244.2.0/24", "c", None),
            Some(Ipv4Addr::new(10, 244, 2, 2))
        );
    }

    #[test]
    fn a_released_address_is_not_handed_out_again_at_once() {
        let mut ipam = Ipam::default();
        let a = ipam.allocate("10.244.1.0/24", "a", None);
        ipam.release("a");
        let b = ipam.allocate("10.244.1.0/24", "b", None);
        assert_ne!(a, b);
    }

    #[test]
    fn preferred_address_is_used_only_when_valid_and_free() {
        let mut ipam = Ipam::default();
        let want = Ipv4Addr::new(10, 244, 1, 40);
        assert_eq!(ipam.allocate("10.244.1.0/24", "a", Some(want)), Some(want));
        // Held by a -> b gets another one.
        assert_ne!(ipam.allocate("10.244.1.0/24", "b", Some(want)), Some(want));
        // Out of the node's subnet or reserved -> ignored.
        let other = ipam.allocate("10.244.1.0/24", "c", Some(Ipv4Addr::new(10, 244, 9, 9)));
        assert_eq!(other.map(|ip| ip.octets()[2]), Some(1));
        let gw = ipam.allocate("10.244.1.0/24", "d", Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_ne!(gw, Some(Ipv4Addr::new(10, 244, 1, 1)));
    }

    #[test]
    fn a_full_subnet_yields_none_and_never_reserved_hosts() {
        let mut ipam = Ipam::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..253 {
            let ip = ipam
                .allocate("10.244.1.0/24", &format!("p{i}"), None)
                .expect("free address");
            let host = ip.octets()[3];
            assert!((2..=254).contains(&host), "{ip}");
            assert!(seen.insert(ip));
        }
        assert_eq!(ipam.allocate("10.244.1.0/24", "one-too-many", None), None);
        ipam.release("p7");
        assert!(ipam.allocate("10.244.1.0/24", "again", None).is_some());
    }
}
