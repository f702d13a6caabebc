#!/usr/bin/env bash
# Builds the `helm` client that the Helm chart of the example app (examples/time-app/chart) is
# tested with, from Helm's published Go module: `go install helm.sh/helm/v4/cmd/helm@<version>`,
# with the version stamped in as Helm's own release build does. Idempotent: a second run finds the
# build in place and returns at once. Needs Go (the release's go.mod asks for a current one); no
# root, no Debian packages.
#
# Usage: provision-helm.sh [VERSION]   (VERSION defaults to the release pinned below; any other is
#                                       refused)
#
# The build is cached outside the repository, keyed by version, and installed atomically (built
# in a temporary directory, renamed into place; a failed or killed build leaves no cache):
#   ${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rollout}/helm-<version>/bin/helm
# Prints that helm's path on stdout (one line); everything else goes to stderr.
set -euo pipefail

# The one release this repository tests with, and the go.sum hash of its module source (as
# `go mod download -json` reports it): the build refuses a module whose source differs, whatever
# the machine's GOSUMDB/GONOSUMCHECK settings say.
VERSION=v4.3.2
MODULE=helm.sh/helm/v4
MODULE_SUM="h1:zdd8DgKTlLrlYIzdoAntDHLH0V3RkgNIpQ3yjzuD84M="
CACHE_ROOT="${ROLLOUT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rollout}"

say() { printf 'provision-helm: %s\n' "$*" >&2; }
die() { printf 'provision-helm: error: %s\n' "$*" >&2; exit 1; }

if [ $# -gt 0 ] && [ "v${1#v}" != "$VERSION" ]; then
  die "Helm $1 is not a version this repository tests with; known: $VERSION"
fi

CACHE_DIR="$CACHE_ROOT/helm-$VERSION"
HELM="$CACHE_DIR/bin/helm"
# What `helm version` reports, as Helm's Makefile sets it for a tagged release.
ldflags="-s -w -X $MODULE/internal/version.version=$VERSION -X $MODULE/internal/version.metadata="
ldflags+=" -X $MODULE/internal/version.gitTreeState=clean"
# The cache is checked against the recipe it was built from, so an edit of the version, the hash or
# the flags above rebuilds instead of serving a stale binary.
recipe=$(printf '%s@%s %s\n%s\n' "$MODULE" "$VERSION" "$MODULE_SUM" "$ldflags" | sha256sum | cut -d' ' -f1)

if [ -f "$CACHE_DIR/recipe" ] && [ "$(cat "$CACHE_DIR/recipe")" = "$recipe" ] && [ -x "$HELM" ]; then
  say "Helm $VERSION cached in $HELM"
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null \
  || die "Go is missing: helm builds from the Go module $MODULE@$VERSION with a current Go: install one, then run this again"
mkdir -p "$CACHE_ROOT"
# Stale half-builds of killed runs (their owner is gone) go first.
for old in "$CACHE_ROOT"/.build-helm-*; do
  [ -e "$old" ] || continue
  pid=${old##*.build-helm-}; pid=${pid%%-*}
  kill -0 "$pid" 2>/dev/null || rm -rf "$old"
done
tmp="$CACHE_ROOT/.build-helm-$$-$VERSION"
rm -rf "$tmp"
mkdir -p "$tmp/bin"
log="$CACHE_ROOT/build-helm-$VERSION.log"
say "building Helm $VERSION with $(go version | awk '{print $3}') from its Go module; log: $log"
say "first build: minutes of compiling (26 min measured on 2 cores shared with six other builds); later runs find it cached"
started=$(date +%s)
(
  # Outside any module: a go.work or go.mod above the current directory must not take part.
  cd "$tmp"
  # A fresh machine (root, maybe no HOME) gets Go's default caches under the cache root; a user's
  # own GOFLAGS (-mod=vendor, ...) must not change this build.
  if [ -z "${HOME:-}" ]; then
    export GOPATH="${GOPATH:-$CACHE_ROOT/go}" GOCACHE="${GOCACHE:-$CACHE_ROOT/go-build}"
  fi
  export CGO_ENABLED=0 GOWORK=off GO111MODULE=on GOFLAGS="-buildvcs=false"
  sum=$(go mod download -json "$MODULE@$VERSION" | awk -F'"' '$2 == "Sum" {print $4}')
  if [ "$sum" != "$MODULE_SUM" ]; then
    echo "module $MODULE@$VERSION has source hash '$sum', expected $MODULE_SUM" >&2
    exit 1
  fi
  GOBIN="$tmp/bin" go install -trimpath -ldflags="$ldflags" "$MODULE/cmd/helm@$VERSION"
) >"$log" 2>&1 || { tail -n 30 "$log" >&2; rm -rf "$tmp"; die "building Helm $VERSION failed; see $log"; }
"$tmp/bin/helm" version --short >>"$log" 2>&1 || { rm -rf "$tmp"; die "the built helm does not run; see $log"; }
echo "$recipe" >"$tmp/recipe"
# Atomic install: the versioned directory appears whole or not at all.
if [ -e "$CACHE_DIR" ]; then
  mv -T "$CACHE_DIR" "$tmp.old"
fi
mv -T "$tmp" "$CACHE_DIR"
rm -rf "$tmp.old"
took=$(( $(date +%s) - started ))
say "built Helm $VERSION into $HELM in $((took / 60))m$((took % 60))s"
echo "$HELM"
