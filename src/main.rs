fn main() {
    eprintln!("rollout: being written");
    std::process::exit(2);
}
