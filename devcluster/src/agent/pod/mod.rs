//! The parts of running one pod: its state as plain data ([`state`]), the status computed from
//! it ([`status`]), its environment and volume sources ([`env`], [`sources`]), its processes
//! ([`process`]), each container's private `/tmp`, `/run` and `/var/log` ([`scratch`]), each container's lifecycle ([`container`]), the per-pod worker tying them
//! together ([`worker`]), the events it records ([`events`]) and its service account's token and
//! the API server's address ([`account`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::AgentConfig;
use crate::net::Ipam;

pub mod account;
pub mod container;
pub mod env;
pub mod events;
pub mod process;
pub mod scratch;
pub mod sources;
pub mod state;
pub mod status;
pub mod worker;

/// What every pod worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub cfg: Arc<AgentConfig>,
    pub ipam: Mutex<Ipam>,
    /// For probes and HTTP lifecycle hooks.
    pub http: reqwest::Client,
    /// The devcluster binary, which has the `pod-init` subcommand.
    pub exe: PathBuf,
}
