#!/usr/bin/env bash
# Installs what the devcluster needs on a fresh Debian machine and builds the Kubernetes control
# plane (kube-apiserver, kube-controller-manager, kube-scheduler) from Debian's `kubernetes`
# source package. Idempotent: a second run finds everything in place and returns in seconds.
#
# The binaries are cached outside the repository, keyed by version:
#   ${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}/kubernetes-<version>/bin
set -euo pipefail

K8S_SOURCE_PACKAGE=kubernetes
CACHE_ROOT="${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}"
PACKAGES=(etcd-server golang-go rsync make openssl iproute2 util-linux procps dpkg-dev curl jq kubectl)

say() { printf 'provision: %s\n' "$*" >&2; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and the devcluster needs network namespaces); try: sudo $0"

apt_updated=0
apt_update_once() {
  [ "$apt_updated" = 1 ] && return 0
  say "apt-get update"
  apt-get update -qq >/tmp/rollout-apt-update.log 2>&1 \
    || die "apt-get update failed; see /tmp/rollout-apt-update.log"
  apt_updated=1
}

# kubectl ships on the machine image; the others come from Debian.
missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$p" = kubectl ]; then command -v kubectl >/dev/null && continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_update_once
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/tmp/rollout-apt-install.log 2>&1 \
    || die "apt-get install ${missing[*]} failed; see /tmp/rollout-apt-install.log"
fi

# The source package's version decides the cache key. apt-cache needs a deb-src entry for it.
SRC_LIST=/etc/apt/sources.list.d/rollout-deb-src.sources
ensure_deb_src() {
  [ -f "$SRC_LIST" ] && return 0
  local main=/etc/apt/sources.list.d/debian.sources
  [ -f "$main" ] || die "no $main to mirror for a deb-src entry; add a deb-src line for Debian main by hand"
  # Mirror the first stanza (URIs, Suites, Components, Signed-By) with Types: deb-src.
  awk 'BEGIN{RS=""; FS="\n"} NR==1 {
         for (i = 1; i <= NF; i++) {
           if ($i ~ /^Types:/) print "Types: deb-src";
           else if ($i !~ /^#/) print $i
         }
       }' "$main" >"$SRC_LIST"
  grep -q '^URIs:' "$SRC_LIST" || { rm -f "$SRC_LIST"; die "could not read URIs from $main"; }
  apt_updated=0
}

version_file="$CACHE_ROOT/kubernetes.version"
if [ -f "$version_file" ] && [ -x "$CACHE_ROOT/kubernetes-$(cat "$version_file")/bin/kube-apiserver" ]; then
  version=$(cat "$version_file")
else
  ensure_deb_src
  apt_update_once
  version=$(apt-cache showsrc "$K8S_SOURCE_PACKAGE" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
  [ -n "$version" ] || die "apt has no source package '$K8S_SOURCE_PACKAGE' (is the deb-src entry in $SRC_LIST right?)"
fi

BIN_DIR="$CACHE_ROOT/kubernetes-$version/bin"
WANT=(kube-apiserver kube-controller-manager kube-scheduler)
have_all=1
for b in "${WANT[@]}"; do [ -x "$BIN_DIR/$b" ] || have_all=0; done

if [ "$have_all" = 1 ]; then
  say "control plane $version cached in $BIN_DIR"
else
  build_root="$CACHE_ROOT/build-$version"
  rm -rf "$build_root"
  mkdir -p "$build_root"
  say "fetching source package $K8S_SOURCE_PACKAGE $version"
  (cd "$build_root" && apt-get source --download-only "$K8S_SOURCE_PACKAGE" >"$build_root/fetch.log" 2>&1) \
    || die "apt-get source $K8S_SOURCE_PACKAGE failed; see $build_root/fetch.log"
  orig=$(ls "$build_root"/*.orig.tar.* 2>/dev/null | head -n1)
  [ -n "$orig" ] || die "no orig tarball in $build_root"
  mkdir -p "$build_root/tree"
  tar -xf "$orig" -C "$build_root/tree" --strip-components=1 \
    || die "could not unpack $orig"
  tree="$build_root/tree"
  # The tree builds in GOPATH mode (module mode wants go.mod updates it cannot fetch offline).
  mkdir -p "$tree/.go/src/k8s.io" "$build_root/home"
  ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
  say "building ${WANT[*]} (about 5 minutes on 2 cores; log: $build_root/build.log)"
  (
    cd "$tree/.go/src/k8s.io/kubernetes"
    export GOPATH="$tree/.go" GO111MODULE=off CGO_ENABLED=0 HOME="$build_root/home" \
           GOFLAGS= KUBE_BUILD_PLATFORMS=linux/amd64
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
  ) >"$build_root/build.log" 2>&1 || { tail -n 30 "$build_root/build.log" >&2; die "control-plane build failed; see $build_root/build.log"; }
  mkdir -p "$BIN_DIR"
  for b in "${WANT[@]}"; do
    src=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n1)
    [ -n "$src" ] || die "build finished but $b is missing under $tree/_output"
    install -m 0755 "$src" "$BIN_DIR/$b.tmp" && mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
  done
  echo "$version" >"$version_file"
  rm -rf "$build_root"
  say "control plane $version built into $BIN_DIR"
fi

# Tell callers where the binaries are (stdout, one line).
echo "$BIN_DIR"
