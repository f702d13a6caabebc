# Shared by scripts/test and scripts/demo: set up a fresh machine and bring the devcluster up.
# Sourced, not run.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  # Network namespaces, bridges and Debian packages need root.
  exec sudo -E "$0" "$@"
fi

# rustup installs cargo under ~/.cargo/bin, which a non-login shell may not have on PATH.
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain (rustup) first" >&2; exit 1; }
for tool in clippy fmt; do
  cargo "$tool" --version >/dev/null 2>&1 \
    || { echo "cargo $tool is missing: rustup component add ${tool/fmt/rustfmt}" >&2; exit 1; }
done

log "provisioning (Debian packages; Kubernetes built from its Go modules once, cached under ~/.cache/rollout)"
K8S_BIN="$(bash devcluster/scripts/provision.sh)"
log "provisioning the gateway (Traefik built from its Go module once, and the Gateway API CRDs; cached the same way)"
bash devcluster/scripts/provision-gateway.sh >/dev/null

log "building the workspace"
cargo build --workspace --bins --quiet

# The cluster's own release of kubectl first: the tests and the demo run it.
export PATH="$K8S_BIN:${CARGO_TARGET_DIR:-$REPO/target}/debug:$PATH"
export KUBECONFIG="${ROLLOUT_DEVCLUSTER_DIR:-/var/tmp/rollout-devcluster}/kubeconfig"

# The helm the end-to-end tests of the Helm chart (examples/time-app/chart) run, built once from
# its Go module and cached beside Kubernetes; the tests read its path from ROLLOUT_HELM.
provision_helm() {
  log "provisioning helm (built once from its Go module, cached under ~/.cache/rollout)"
  ROLLOUT_HELM="$(bash scripts/provision-helm.sh)"
  export ROLLOUT_HELM
}

devcluster_up() {
  log "devcluster up --nodes ${1:-3}"
  devcluster up --nodes "${1:-3}"
}
