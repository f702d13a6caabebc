//! The devcluster: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler) on this machine, plus the node agent that plays the kubelet and kube-proxy for
//! its nodes by running each pod as local processes in their own network and mount namespaces,
//! and Traefik as its Gateway API implementation (`gateway`).
//!
//! The library half is what the `devcluster` binary and the end-to-end tests share: where the
//! cluster keeps its files and how to get a client for it.

pub mod agent;
pub mod cluster;
pub mod controlplane;
pub mod gateway;
pub mod hostnet;
pub mod layout;
pub mod mirror;
pub mod net;
pub mod podinit;
pub mod procs;
pub mod prometheus;
pub mod testkit;

pub use layout::Layout;
