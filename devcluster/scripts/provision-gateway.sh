#!/usr/bin/env bash
# Builds the devcluster's Gateway API implementation, Traefik, from its published Go module
# (unmodified: the release's own source and link flags, nothing patched), and fetches the Gateway
# API CRDs (standard channel) of the exact sigs.k8s.io/gateway-api release that Traefik is built
# against. Idempotent: a second run finds both in place and returns in well under a second.
#
# Usage: provision-gateway.sh
#
# Both are cached outside the repository, keyed by version, and installed atomically (made in a
# temporary directory, renamed into place; a failed or killed run leaves no cache):
#   ${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}/traefik-<version>/bin/traefik
#   ${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}/gateway-api-<version>/crds/standard/*.yaml
# Prints two lines on stdout, `traefik=<binary>` and `crds=<directory>`; everything else goes to
# stderr.
set -euo pipefail

# The Traefik release the devcluster runs. v3.6.12 is the newest whose whole dependency graph the
# Go module proxy here serves (v3.7 needs lego DNS providers and a go-http-auth fork it refuses).
TRAEFIK_VERSION=v3.6.12
TRAEFIK_MODULE=github.com/traefik/traefik/v3
# What that release's go.mod requires; checked against it before anything is installed.
GATEWAY_API_VERSION=v1.4.0
GATEWAY_API_MODULE=sigs.k8s.io/gateway-api
CACHE_ROOT="${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rollout}"

say() { printf 'provision-gateway: %s\n' "$*" >&2; }
die() { printf 'provision-gateway: error: %s\n' "$*" >&2; exit 1; }

TRAEFIK_DIR="$CACHE_ROOT/traefik-$TRAEFIK_VERSION"
TRAEFIK_BIN="$TRAEFIK_DIR/bin/traefik"
CRDS_CACHE="$CACHE_ROOT/gateway-api-$GATEWAY_API_VERSION"
CRDS_DIR="$CRDS_CACHE/crds/standard"
# The release's own version variables (its Makefile and .goreleaser.yml set the same ones), so
# `traefik version` says what it is.
ldflags="-s -w -X $TRAEFIK_MODULE/pkg/version.Version=${TRAEFIK_VERSION#v}"
goflags="-mod=mod -buildvcs=false"
# Keyed by version and checked against the recipe, so an edit of the flags above (or of the
# Gateway API pin) rebuilds instead of serving a stale binary.
traefik_recipe=$(printf '%s\n' "$TRAEFIK_MODULE@$TRAEFIK_VERSION" "$GATEWAY_API_VERSION" "$ldflags" "$goflags" | sha256sum | cut -d' ' -f1)
crds_recipe=$(printf '%s\n' "$GATEWAY_API_MODULE@$GATEWAY_API_VERSION" config/crd/standard | sha256sum | cut -d' ' -f1)

traefik_cached() {
  [ -x "$TRAEFIK_BIN" ] && [ -f "$TRAEFIK_DIR/recipe" ] && [ "$(cat "$TRAEFIK_DIR/recipe")" = "$traefik_recipe" ]
}
crds_cached() {
  [ -f "$CRDS_CACHE/recipe" ] && [ "$(cat "$CRDS_CACHE/recipe")" = "$crds_recipe" ] \
    && compgen -G "$CRDS_DIR/*.yaml" >/dev/null
}

# Go's caches for a fresh machine (root, maybe no HOME) go under the cache root; a user's own
# GOFLAGS or a go.work above the current directory must not change these builds.
go_env() {
  if [ -z "${HOME:-}" ]; then
    export GOPATH="${GOPATH:-$CACHE_ROOT/go}" GOCACHE="${GOCACHE:-$CACHE_ROOT/go-build}"
  fi
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on GOFLAGS="$goflags"
}

need_go() {
  command -v go >/dev/null \
    || die "Go is missing: Traefik and the Gateway API CRDs come from the Go module proxy with a current Go (Traefik $TRAEFIK_VERSION asks for go 1.25 or newer)"
}

# The directory of one module version in Go's module cache (downloaded if needed), or dies.
module_dir() {
  local json dir
  json=$(cd / && go mod download -json "$1@$2" 2>&1) \
    || die "downloading $1@$2 from the Go module proxy failed: $(printf '%s' "$json" | tr -s '\n' ' ' | cut -c1-400)"
  dir=$(printf '%s' "$json" | jq -r '.Dir // empty')
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1@$2 gave no module directory: $json"
  echo "$dir"
}

# Removes half-made directories of killed runs (their owner is gone).
sweep_stale() {
  local old pid
  for old in "$CACHE_ROOT"/.build-*; do
    [ -e "$old" ] || continue
    pid=${old##*.build-}; pid=${pid%%-*}
    kill -0 "$pid" 2>/dev/null || rm -rf "$old"
  done
}

# Renames the finished temporary directory $1 onto $2: it appears whole or not at all.
install_atomically() {
  if [ -e "$2" ]; then
    mv -T "$2" "$1.old"
  fi
  mv -T "$1" "$2"
  rm -rf "$1.old"
}

if crds_cached; then
  say "Gateway API $GATEWAY_API_VERSION CRDs cached in $CRDS_DIR"
else
  need_go
  command -v jq >/dev/null || die "jq is missing: devcluster/scripts/provision.sh installs it (apt-get install jq)"
  go_env
  mkdir -p "$CACHE_ROOT"
  sweep_stale
  src=$(module_dir "$GATEWAY_API_MODULE" "$GATEWAY_API_VERSION")
  compgen -G "$src/config/crd/standard/*.yaml" >/dev/null \
    || die "$GATEWAY_API_MODULE@$GATEWAY_API_VERSION has no config/crd/standard/*.yaml"
  tmp="$CACHE_ROOT/.build-$$-gateway-api-$GATEWAY_API_VERSION"
  rm -rf "$tmp"
  mkdir -p "$tmp/crds/standard"
  cp "$src"/config/crd/standard/*.yaml "$tmp/crds/standard/"
  chmod -R u+w "$tmp"
  echo "$crds_recipe" >"$tmp/recipe"
  install_atomically "$tmp" "$CRDS_CACHE"
  say "Gateway API $GATEWAY_API_VERSION standard-channel CRDs ($(ls "$CRDS_DIR" | wc -l) files) cached in $CRDS_DIR"
fi

if traefik_cached; then
  say "Traefik $TRAEFIK_VERSION cached in $TRAEFIK_BIN"
else
  need_go
  command -v jq >/dev/null || die "jq is missing: devcluster/scripts/provision.sh installs it (apt-get install jq)"
  go_env
  mkdir -p "$CACHE_ROOT"
  sweep_stale
  log="$CACHE_ROOT/build-traefik-$TRAEFIK_VERSION.log"
  src=$(module_dir "$TRAEFIK_MODULE" "$TRAEFIK_VERSION")
  grep -Eq "^[[:space:]]*$GATEWAY_API_MODULE $GATEWAY_API_VERSION\$" "$src/go.mod" \
    || die "Traefik $TRAEFIK_VERSION does not require $GATEWAY_API_MODULE $GATEWAY_API_VERSION (see $src/go.mod); pin the CRDs to the version it requires"
  tmp="$CACHE_ROOT/.build-$$-traefik-$TRAEFIK_VERSION"
  rm -rf "$tmp"
  mkdir -p "$tmp/bin"
  # The module cache is read-only and the module has `replace` lines (so `go install mod@ver`
  # refuses it): build from a writable copy of the module, as its own main module.
  cp -r "$src" "$tmp/src"
  chmod -R u+w "$tmp/src"
  say "building Traefik $TRAEFIK_VERSION with $(go version | awk '{print $3}') from the Go module proxy; log: $log"
  say "first build: about 10 minutes on 2 cores, nearly all of it compiling"
  started=$(date +%s)
  (
    cd "$tmp/src"
    go build -trimpath -ldflags="$ldflags" -o "$tmp/bin/traefik" ./cmd/traefik
  ) >"$log" 2>&1 || { tail -n 30 "$log" >&2; rm -rf "$tmp"; die "building Traefik $TRAEFIK_VERSION failed; see $log"; }
  rm -rf "$tmp/src"
  "$tmp/bin/traefik" version >>"$log" 2>&1 || { rm -rf "$tmp"; die "the built traefik does not run; see $log"; }
  echo "$traefik_recipe" >"$tmp/recipe"
  install_atomically "$tmp" "$TRAEFIK_DIR"
  took=$(( $(date +%s) - started ))
  say "built Traefik $TRAEFIK_VERSION into $TRAEFIK_BIN in $((took / 60))m$((took % 60))s"
fi

echo "traefik=$TRAEFIK_BIN"
echo "crds=$CRDS_DIR"
