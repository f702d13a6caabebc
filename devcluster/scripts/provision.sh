#!/usr/bin/env bash
# Installs what the devcluster needs on a fresh Debian machine and builds its Kubernetes control
# plane from the published Go modules: the small Go module in devcluster/controlplane/ requires
# k8s.io/kubernetes at one exact release and builds one multi-call binary that runs as etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (by the name it is called
# by). Idempotent: a second run finds the build in place and returns in about a second.
#
# Usage: provision.sh [VERSION]   (VERSION defaults to the release devcluster/controlplane/go.mod
#                                  pins; any other is refused)
#
# The build is cached outside the repository, keyed by version, and installed atomically (built
# in a temporary directory, renamed into place; a failed or killed build leaves no cache):
#   ${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}/kubernetes-<version>/bin
# Prints that bin directory on stdout (one line); everything else goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULE_DIR="$(cd "$HERE/../controlplane" && pwd)"
CACHE_ROOT="${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rollout}"
# prometheus: the metric gates' Prometheus (Debian's package; `devcluster up` runs it).
PACKAGES=(openssl iproute2 util-linux procps curl jq ca-certificates prometheus)
# Names the multi-call binary answers to; one symlink each in the bin directory.
COMMANDS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

say() { printf 'provision: %s\n' "$*" >&2; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and the devcluster needs network namespaces); try: sudo $0"

# The one release this repository builds: the version go.mod requires.
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$MODULE_DIR/go.mod")
[ -n "$version" ] || die "$MODULE_DIR/go.mod requires no k8s.io/kubernetes release"
if [ $# -gt 0 ] && [ "v${1#v}" != "$version" ]; then
  die "Kubernetes $1 is not a version this repository builds; known: $version"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get update"
  apt-get update -qq >/tmp/rollout-apt-update.log 2>&1 \
    || die "apt-get update failed; see /tmp/rollout-apt-update.log"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/tmp/rollout-apt-install.log 2>&1 \
    || die "apt-get install ${missing[*]} failed; see /tmp/rollout-apt-install.log"
fi

CACHE_DIR="$CACHE_ROOT/kubernetes-$version"
BIN_DIR="$CACHE_DIR/bin"
major=${version#v}; major=${major%%.*}
minor=${version#v"$major".}; minor=${minor%%.*}
# What `kubectl version` and the API server's /version report, as the release's own build sets it
# (hack/lib/version.sh: the same variables in component-base and client-go).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# The cache is keyed by version, and checked against the recipe it was built from, so an edit of
# the module or of the flags above rebuilds instead of serving a stale binary.
recipe=$(cat "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" "$MODULE_DIR/main.go" <(echo "$ldflags") | sha256sum | cut -d' ' -f1)

cached() {
  [ -f "$CACHE_DIR/recipe" ] && [ "$(cat "$CACHE_DIR/recipe")" = "$recipe" ] || return 1
  for c in "${COMMANDS[@]}"; do [ -x "$BIN_DIR/$c" ] || return 1; done
}

if cached; then
  say "Kubernetes $version cached in $BIN_DIR"
else
  command -v go >/dev/null \
    || die "Go is missing: the control plane builds from the Go module proxy with a current Go (go.mod asks for $(awk '$1 == "go" {print $2}' "$MODULE_DIR/go.mod"))"
  mkdir -p "$CACHE_ROOT"
  # Stale half-builds of killed runs (their owner is gone) go first.
  for old in "$CACHE_ROOT"/.build-*; do
    [ -e "$old" ] || continue
    pid=${old##*.build-}; pid=${pid%%-*}
    kill -0 "$pid" 2>/dev/null || rm -rf "$old"
  done
  tmp="$CACHE_ROOT/.build-$$-$version"
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  log="$CACHE_ROOT/build-$version.log"
  say "building Kubernetes $version (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) with $(go version | awk '{print $3}') from the Go module proxy"
  say "first build: about 10 minutes on 2 cores, nearly all of it compiling (the modules, 610 MB, download in seconds); log: $log"
  started=$(date +%s)
  (
    cd "$MODULE_DIR"
    # A fresh machine (root, maybe no HOME) gets Go's default caches under the cache root; a user's
    # own GOFLAGS (-mod=vendor, ...) or a go.work above the repository must not change this build.
    if [ -z "${HOME:-}" ]; then
      export GOPATH="${GOPATH:-$CACHE_ROOT/go}" GOCACHE="${GOCACHE:-$CACHE_ROOT/go-build}"
    fi
    export CGO_ENABLED=0 GOWORK=off GO111MODULE=on GOFLAGS="-mod=readonly -buildvcs=false"
    go build -trimpath -ldflags="$ldflags" -o "$tmp/bin/k8s" .
  ) >"$log" 2>&1 || { tail -n 30 "$log" >&2; rm -rf "$tmp"; die "building Kubernetes $version failed; see $log"; }
  for c in "${COMMANDS[@]}"; do ln -s k8s "$tmp/bin/$c"; done
  "$tmp/bin/kube-apiserver" --version >>"$log" 2>&1 || { rm -rf "$tmp"; die "the built kube-apiserver does not run; see $log"; }
  echo "$recipe" >"$tmp/recipe"
  # Atomic install: the versioned directory appears whole or not at all.
  if [ -e "$CACHE_DIR" ]; then
    mv -T "$CACHE_DIR" "$tmp.old"
  fi
  mv -T "$tmp" "$CACHE_DIR"
  rm -rf "$tmp.old"
  took=$(( $(date +%s) - started ))
  say "built Kubernetes $version into $BIN_DIR in $((took / 60))m$((took % 60))s"
fi

echo "$BIN_DIR"
