//! The control plane: keys and certificates, kubeconfigs, and the four processes (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) with the flags that make them a
//! small but real cluster on loopback, and the Kubernetes releases the devcluster knows how to run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::layout::{self, Layout};
use crate::procs::{self, ProcError, Started};

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("openssl failed while making {what}: {stderr}")]
    Openssl { what: String, stderr: String },
    #[error("could not run openssl (is Debian's openssl installed? devcluster/scripts/provision.sh installs it)")]
    OpensslMissing(#[source] io::Error),
    #[error(transparent)]
    Start(#[from] ProcError),
    #[error("{name} did not become healthy within {waited:?}; its log is {log}:\n{tail}")]
    NotHealthy {
        name: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} exited during start; its log is {log}:\n{tail}")]
    Exited {
        name: String,
        log: PathBuf,
        tail: String,
    },
}

/// The Kubernetes releases `devcluster up --kubernetes` accepts, newest (the default) first. Each
/// is built from `devcluster/controlplane/go.mod` by `scripts/provision.sh`.
pub const KUBERNETES_VERSIONS: &[&str] = &["v1.37.2"];

/// The release `--kubernetes VERSION` names (`1.37.2`, `v1.37.2` or the minor `1.37`), or an
/// error naming the known ones.
pub fn known_version(asked: &str) -> Result<&'static str, String> {
    let want = asked.trim().trim_start_matches('v');
    KUBERNETES_VERSIONS
        .iter()
        .find(|v| {
            let v = v.trim_start_matches('v');
            v == want || v.rsplit_once('.').is_some_and(|(minor, _)| minor == want)
        })
        .copied()
        .ok_or_else(|| {
            format!(
                "Kubernetes {asked} is not a version the devcluster runs; known: {}",
                KUBERNETES_VERSIONS.join(", ")
            )
        })
}

/// Where the control-plane binaries are: the provision cache's bin directory, holding etcd,
/// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of one release.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

/// One control-plane process: how to start it and how to tell it is serving.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// An HTTP(S) URL on loopback that answers 2xx once the process serves.
    pub health_url: String,
    /// How long a start may take before it counts as failed.
    pub start_timeout: Duration,
}

/// The control plane in start order (each needs the one before it), with the same flags and data
/// every time: `up` starts them, and restarts any that died without losing the cluster's objects.
pub fn components(layout: &Layout, bins: &Binaries) -> Vec<Component> {
    let kcm_kc = layout.pki_dir().join("controller-manager.kubeconfig");
    let sched_kc = layout.pki_dir().join("scheduler.kubeconfig");
    vec![
        Component {
            name: "etcd",
            program: bins.dir.join("etcd"),
            args: etcd_args(layout),
            health_url: format!("http://127.0.0.1:{}/health", layout::ETCD_CLIENT_PORT),
            start_timeout: Duration::from_secs(60),
        },
        Component {
            name: "kube-apiserver",
            program: bins.dir.join("kube-apiserver"),
            args: apiserver_args(layout),
            health_url: format!("{}/readyz", api_url()),
            start_timeout: Duration::from_secs(120),
        },
        Component {
            name: "kube-controller-manager",
            program: bins.dir.join("kube-controller-manager"),
            args: controller_manager_args(layout, &kcm_kc),
            health_url: format!(
                "https://127.0.0.1:{}/healthz",
                layout::CONTROLLER_MANAGER_PORT
            ),
            start_timeout: Duration::from_secs(60),
        },
        Component {
            name: "kube-scheduler",
            program: bins.dir.join("kube-scheduler"),
            args: scheduler_args(layout, &sched_kc),
            health_url: format!("https://127.0.0.1:{}/healthz", layout::SCHEDULER_PORT),
            start_timeout: Duration::from_secs(60),
        },
    ]
}

/// The admin token `make_pki` wrote, for health checks of a cluster this process did not start.
pub fn admin_token(layout: &Layout) -> Option<String> {
    let tokens = fs::read_to_string(layout.pki_dir().join("tokens.csv")).ok()?;
    tokens
        .lines()
        .find(|l| l.split(',').nth(1) == Some("admin"))
        .and_then(|l| l.split(',').next())
        .map(str::to_string)
}

/// Bearer tokens, one per client identity, generated fresh for each `up`.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub controller_manager: String,
    pub scheduler: String,
    pub agent: String,
}

pub fn api_url() -> String {
    format!("https://127.0.0.1:{}", layout::API_PORT)
}

fn write(path: &Path, contents: &str) -> Result<(), ControlPlaneError> {
    fs::write(path, contents).map_err(|source| ControlPlaneError::Write {
        path: path.into(),
        source,
    })
}

fn openssl(what: &str, args: &[&str]) -> Result<(), ControlPlaneError> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(ControlPlaneError::OpensslMissing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ControlPlaneError::Openssl {
            what: what.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

fn random_token() -> String {
    (0..32).map(|_| fastrand::alphanumeric()).collect()
}

/// A CA, a serving certificate for the API server (valid for 127.0.0.1, localhost, the bridge
/// address and the `kubernetes` Service names, so both kubectl and rustls verify it), the
/// service-account signing key pair, and the static token file.
pub fn make_pki(layout: &Layout) -> Result<Tokens, ControlPlaneError> {
    let dir = layout.pki_dir();
    fs::create_dir_all(&dir).map_err(|source| ControlPlaneError::Write {
        path: dir.clone(),
        source,
    })?;
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    openssl(
        "the cluster CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-days",
            "3650",
            "-subj",
            "/CN=devcluster-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    write(
        &dir.join("apiserver.ext"),
        &format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:{},IP:10.96.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
            layout::BRIDGE_IP
        ),
    )?;
    openssl(
        "the API server key",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("apiserver.key"),
            "-out",
            &p("apiserver.csr"),
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    openssl(
        "the API server certificate",
        &[
            "x509",
            "-req",
            "-in",
            &p("apiserver.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("apiserver.crt"),
            "-days",
            "3650",
            "-extfile",
            &p("apiserver.ext"),
        ],
    )?;
    openssl(
        "the service-account key",
        &["genrsa", "-out", &p("sa.key"), "2048"],
    )?;
    openssl(
        "the service-account public key",
        &["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")],
    )?;
    let tokens = Tokens {
        admin: random_token(),
        controller_manager: random_token(),
        scheduler: random_token(),
        agent: random_token(),
    };
    // Every identity is in system:masters: this cluster is a single-user test bed.
    write(
        &dir.join("tokens.csv"),
        &format!(
            "{},admin,admin,\"system:masters\"\n{},system:kube-controller-manager,kcm,\"system:masters\"\n\
             {},system:kube-scheduler,sched,\"system:masters\"\n{},devcluster-agent,agent,\"system:masters\"\n",
            tokens.admin, tokens.controller_manager, tokens.scheduler, tokens.agent
        ),
    )?;
    Ok(tokens)
}

/// A kubeconfig for `user` holding `token`, trusting the cluster CA by value (so the file can be
/// copied anywhere).
pub fn kubeconfig(layout: &Layout, user: &str, token: &str) -> Result<String, ControlPlaneError> {
    let ca_path = layout.pki_dir().join("ca.crt");
    let ca = fs::read(&ca_path).map_err(|source| ControlPlaneError::Write {
        path: ca_path,
        source,
    })?;
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: devcluster\n  cluster:\n    server: {}\n    \
         certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n\
         - name: devcluster\n  context:\n    cluster: devcluster\n    user: {user}\n    namespace: default\n\
         current-context: devcluster\n",
        api_url(),
        base64(&ca)
    ))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn etcd_args(layout: &Layout) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", layout::ETCD_CLIENT_PORT);
    let peer = format!("http://127.0.0.1:{}", layout::ETCD_PEER_PORT);
    vec![
        "--name=devcluster".into(),
        format!("--data-dir={}", layout.etcd_dir().display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=devcluster={peer}"),
        "--log-level=warn".into(),
    ]
}

pub fn apiserver_args(layout: &Layout) -> Vec<String> {
    let pki = |f: &str| layout.pki_dir().join(f).display().to_string();
    vec![
        format!(
            "--etcd-servers=http://127.0.0.1:{}",
            layout::ETCD_CLIENT_PORT
        ),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", layout::API_PORT),
        // The `kubernetes` Service's endpoint may not be a loopback address; the bridge's is real.
        format!("--advertise-address={}", layout::BRIDGE_IP),
        format!("--service-cluster-ip-range={}", layout::SERVICE_CIDR),
        "--service-node-port-range=30000-32767".into(),
        "--authorization-mode=Node,RBAC".into(),
        format!("--token-auth-file={}", pki("tokens.csv")),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        // Pods here run as host processes and mount no API token; without this plugin a pod
        // also needs no ServiceAccount to exist before it can be created.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        format!("--cert-dir={}", layout.pki_dir().display()),
        "--v=1".into(),
    ]
}

pub fn controller_manager_args(layout: &Layout, kubeconfig: &Path) -> Vec<String> {
    let pki = |f: &str| layout.pki_dir().join(f).display().to_string();
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--controllers=*".into(),
        "--leader-elect=false".into(),
        format!("--service-account-private-key-file={}", pki("sa.key")),
        format!("--root-ca-file={}", pki("ca.crt")),
        format!("--service-cluster-ip-range={}", layout::SERVICE_CIDR),
        "--cluster-cidr=10.244.0.0/16".into(),
        "--allocate-node-cidrs=false".into(),
    ]
    .into_iter()
    .chain(secure_serving_args(
        layout,
        kubeconfig,
        layout::CONTROLLER_MANAGER_PORT,
    ))
    .collect()
}

pub fn scheduler_args(layout: &Layout, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".into(),
    ]
    .into_iter()
    .chain(secure_serving_args(
        layout,
        kubeconfig,
        layout::SCHEDULER_PORT,
    ))
    .collect()
}

/// The controller-manager and the scheduler serve /healthz only over TLS (their plain-HTTP port
/// went away in 1.24). They serve the API server's certificate, which is valid for 127.0.0.1 and
/// signed by the cluster CA, so the health checks verify it like any other client; requests are
/// authenticated and authorized by asking the API server, as kubeadm sets them up.
fn secure_serving_args(layout: &Layout, kubeconfig: &Path, port: u16) -> Vec<String> {
    let pki = |f: &str| layout.pki_dir().join(f).display().to_string();
    vec![
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", pki("apiserver.crt")),
        format!("--tls-private-key-file={}", pki("apiserver.key")),
        format!("--authentication-kubeconfig={}", kubeconfig.display()),
        format!("--authorization-kubeconfig={}", kubeconfig.display()),
        // Tokens are checked with the API server; there is no front proxy, so the client-CA
        // lookup in kube-system would only log, every few seconds, that it found none.
        "--authentication-skip-lookup=true".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// The last lines of a process's log, for error messages.
pub fn log_tail(layout: &Layout, name: &str, lines: usize) -> (PathBuf, String) {
    let path = layout.logs_dir().join(format!("{name}.log"));
    let text = fs::read_to_string(&path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (path, tail)
}

/// Waits until `check` answers true, failing early if the process died.
pub async fn wait_healthy<F, Fut>(
    layout: &Layout,
    started: &Started,
    timeout: Duration,
    mut check: F,
) -> Result<Duration, ControlPlaneError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let begin = Instant::now();
    loop {
        if check().await {
            return Ok(begin.elapsed());
        }
        if !procs::alive(started.pid) {
            let (log, tail) = log_tail(layout, &started.name, 20);
            return Err(ControlPlaneError::Exited {
                name: started.name.clone(),
                log,
                tail,
            });
        }
        if begin.elapsed() > timeout {
            let (log, tail) = log_tail(layout, &started.name, 20);
            return Err(ControlPlaneError::NotHealthy {
                name: started.name.clone(),
                waited: timeout,
                log,
                tail,
            });
        }
        // A process's health endpoint has no watch to wait on; a short bounded poll it is.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for the health endpoints (loopback only), trusting the cluster CA.
/// Starts `c` (with its recorded flags and data) and waits until its health URL answers,
/// asking with `token`; gives the process and how long it took to serve.
pub async fn start_component(
    layout: &Layout,
    http: &reqwest::Client,
    c: &Component,
    token: Option<&str>,
) -> anyhow::Result<(Started, Duration)> {
    let started = procs::spawn(
        &layout.pids_dir(),
        &layout.logs_dir(),
        c.name,
        &c.program,
        &c.args,
        &[],
    )?;
    let took = wait_healthy(layout, &started, c.start_timeout, || {
        http_ok(http, &c.health_url, token)
    })
    .await?;
    Ok((started, took))
}

pub fn health_client(layout: &Layout) -> anyhow::Result<reqwest::Client> {
    let ca = fs::read(layout.pki_dir().join("ca.crt"))?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(2))
        .build()?)
}

pub async fn http_ok(client: &reqwest::Client, url: &str, token: Option<&str>) -> bool {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    matches!(req.send().await, Ok(r) if r.status().is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn version_choice_accepts_known_releases_and_names_them_otherwise() {
        let newest = KUBERNETES_VERSIONS[0];
        let minor = newest
            .trim_start_matches('v')
            .rsplit_once('.')
            .unwrap()
            .0
            .to_string();
        for asked in [newest, newest.trim_start_matches('v'), minor.as_str()] {
            assert_eq!(known_version(asked), Ok(newest), "{asked}");
        }
        let err = known_version("1.20.2").unwrap_err();
        assert!(err.contains("1.20.2") && err.contains(newest), "{err}");
    }

    #[test]
    fn the_newest_known_version_is_the_one_the_go_module_builds() {
        let go_mod =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/go.mod"))
                .unwrap();
        let line = format!("k8s.io/kubernetes {}", KUBERNETES_VERSIONS[0]);
        assert!(
            go_mod.lines().any(|l| l.trim() == line),
            "go.mod lacks `{line}`"
        );
    }

    #[test]
    fn no_flag_removed_since_1_20_is_passed() {
        let layout = Layout::new("/x");
        let bins = Binaries { dir: "/bin".into() };
        for c in components(&layout, &bins) {
            for removed in [
                "--address=",
                "--port=",
                "--insecure-port",
                "--secure-port=0",
            ] {
                assert!(
                    !c.args.iter().any(|a| a.starts_with(removed)),
                    "{} gets {removed}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn apiserver_never_advertises_loopback() {
        let args = apiserver_args(&Layout::new("/x"));
        let adv = args
            .iter()
            .find(|a| a.starts_with("--advertise-address="))
            .unwrap();
        assert!(!adv.contains("127."), "{adv}");
    }
}
