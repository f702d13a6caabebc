//! `devcluster`: bring a real local Kubernetes up and down, and (internally) run its node agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use devcluster::agent::AgentConfig;
use devcluster::{cluster, controlplane, layout, Layout};

fn parse_kubernetes_version(asked: &str) -> Result<&'static str, String> {
    controlplane::known_version(asked)
}

#[derive(Parser)]
#[command(
    name = "devcluster",
    version,
    about = "A real Kubernetes control plane on this machine, with pods run as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start etcd, the API server, controller-manager, scheduler, the node agent, the gateways
    /// (Traefik, and the devcluster's own mirror subset) and Prometheus; returns when the cluster
    /// runs pods and the gateway serves. On a cluster already up, starts only what is missing.
    /// Builds the control plane and Traefik on first use (cached afterwards).
    Up {
        /// Number of Node objects the agent plays.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The Kubernetes release to run (default: the newest the devcluster knows); an unknown
        /// one is refused, naming the known ones.
        #[arg(long, value_name = "VERSION", value_parser = parse_kubernetes_version, default_value = controlplane::KUBERNETES_VERSIONS[0])]
        kubernetes: &'static str,
    },
    /// Stop every process and remove every namespace, veth, bridge, mount and file it made.
    Down,
    /// Show the processes, the API server, the nodes and the gateway.
    Status,
    /// Replace the running node agent with this binary's (after rebuilding it), keeping the
    /// control plane and every object; running pods are restarted by the new agent.
    RestartAgent,
    /// Print the exports for this cluster: KUBECONFIG, ROLLOUT_GATEWAY_URL and
    /// ROLLOUT_PROMETHEUS_URL.
    Env,
    /// Run the node agent in the foreground (`up` starts it for you).
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        bin_dir: PathBuf,
    },
    /// Run the mirror gateway in the foreground (`up` starts it for you): the devcluster's own
    /// Gateway API implementation of weighted backendRefs and RequestMirror, GatewayClass
    /// `devcluster-mirror`, on 127.0.0.1:18081.
    #[command(hide = true)]
    GatewayServe {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: std::net::SocketAddr,
    },
    /// Keep Prometheus's targets file from a watch of the pods (`up` starts it).
    #[command(hide = true)]
    PrometheusSd {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Enter a pod's namespaces, mount its volumes and exec its command (used by the agent).
    #[command(hide = true)]
    PodInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layout = Layout::from_env();
    if let Cmd::PodInit { args } = cli.command {
        // Runs before any thread exists: setns/unshare need a single-threaded process.
        devcluster::podinit::main(&args);
    }
    tracing_subscriber::fmt()
        // A control plane that is down (what `up` heals) makes the client log every refused
        // connection as an error; `up` says it in its own words.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devcluster: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Up { nodes, kubernetes } => {
                let bin_dir = std::env::current_exe()?
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                cluster::up(&layout, nodes, kubernetes, &bin_dir)
                    .await
                    .map(|_| true)
            }
            Cmd::Down => cluster::down(&layout).map(|_| true),
            Cmd::Status => cluster::status(&layout).await,
            Cmd::RestartAgent => cluster::restart_agent(&layout).await.map(|_| true),
            Cmd::Env => {
                cluster::print_env(&layout);
                Ok(true)
            }
            Cmd::Agent {
                nodes,
                kubeconfig,
                bin_dir,
            } => {
                let cfg = AgentConfig {
                    layout: layout.clone(),
                    nodes: (1..=nodes).map(layout::node_name).collect(),
                    runtime_file: layout::default_runtime_file(),
                    bin_dir,
                    kubeconfig,
                };
                devcluster::agent::run(cfg).await.map(|_| true)
            }
            Cmd::GatewayServe { kubeconfig, listen } => {
                let client = devcluster::layout::client(&kubeconfig).await?;
                devcluster::mirror::run(client, listen).await.map(|_| true)
            }
            Cmd::PrometheusSd { kubeconfig, out } => {
                devcluster::prometheus::discover(&kubeconfig, &out)
                    .await
                    .map(|_| true)
            }
            Cmd::PodInit { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("devcluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
