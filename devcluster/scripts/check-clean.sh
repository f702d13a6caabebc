#!/usr/bin/env bash
# Checks, independently of `devcluster down`'s own bookkeeping, that no process, network
# namespace, link, mount or directory of the devcluster is left on this machine.
set -uo pipefail
ROOT="${ROLLOUT_DEVCLUSTER_DIR:-/var/tmp/rollout-devcluster}"
bad=0
fail() { echo "check-clean: left behind: $*" >&2; bad=1; }

ns=$(ip netns list 2>/dev/null | awk '$1 ~ /^rdc-/ {print $1}')
[ -z "$ns" ] || fail "network namespaces: $ns"
links=$(ip -o link show 2>/dev/null | awk -F': ' '{split($2, a, "@"); print a[1]}' | grep -E '^(rdc0|rdcv)' || true)
[ -z "$links" ] || fail "links: $links"
mounts=$(awk -v r="$ROOT" 'index($2, r) == 1 {print $2}' /proc/mounts)
[ -z "$mounts" ] || fail "mounts: $mounts"
# Live processes only: a killed child of a reparented process may linger as a zombie until
# init reaps it, and a zombie holds nothing.
live() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' | grep -v -e check-clean -e ' grep ' || true; }
procs=$(live | grep -F -- "$ROOT" || true)
[ -z "$procs" ] || fail "processes: $procs"
# By executable: the control plane, the gateway (traefik) and the agent (`devcluster agent ...`).
progs=$(live | awk '{ n = split($3, a, "/"); exe = a[n];
  if (exe ~ /^(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|traefik)$/ || (exe == "devcluster" && $4 == "agent")) print }')
[ -z "$progs" ] || fail "processes: $progs"
[ ! -e "$ROOT" ] || fail "directory $ROOT"
[ "$bad" = 0 ] && echo "check-clean: nothing left behind"
exit "$bad"
