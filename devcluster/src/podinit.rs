//! TODO (being written): `devcluster pod-init ARGS` enters a pod's namespaces, mounts its volumes
//! and execs its command. Contract with main.rs: `pub fn main(args: &[String]) -> !`, called before
//! any thread or async runtime exists; `args` are everything after `pod-init`.

pub fn main(args: &[String]) -> ! {
    eprintln!("devcluster pod-init: not written yet (args: {args:?})");
    std::process::exit(127);
}
