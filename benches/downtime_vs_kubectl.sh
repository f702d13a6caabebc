#!/usr/bin/env bash
# Benchmark: what a client of the time app's Service sees during a recreate and during a
# blue/green switch, `rollout` against the same change done with kubectl by hand, on the running
# devcluster, in one run.
#
# The client is benches/poll.py: `GET /` to 127.0.0.1:<nodePort> of the LoadBalancer Service, a
# new connection per request, one at a time, at most one per INTERVAL, 2 s timeout; each answer
# names its version (X-App-Version) and pod (X-Pod-Name). It runs from before each change until
# it has seen the new version after the tool returned. From its lines: the gap from the last
# answer of the old version to the first of the new one, and the requests that got no 2xx answer.
#
# 1. Recreate, in one namespace, the tools taking turns (v2, v3, ...):
#    `rollout recreate time-app --image time-app:vN` against `kubectl scale --replicas=0`,
#    `kubectl wait --for=delete pod -l app=time-app`, `kubectl set image`, `kubectl scale
#    --replicas=3`, `kubectl rollout status`. Per round: wall time, client-seen downtime, failed
#    requests, and the downtime `rollout` reported (`status -o json`: .record.measured.downtimeMs,
#    from the pods' Ready transitions). Averages and the ratios rollout/kubectl.
# 2. Blue/green switch, a fresh namespace with the v1 app per tool and round:
#    `rollout bluegreen time-app --image time-app:v2 --auto-promote --scale-down-delay 0s`
#    against, by hand: pin the Service to blue's pods (selector + controller-revision-hash, as
#    `rollout` does, else green's pods join the Service as they become Ready), `kubectl apply` a
#    second StatefulSet time-app-green whose pods carry the extra label set=green, `kubectl rollout
#    status` it, `kubectl patch service` the selector to app=time-app,set=green, scale blue to 0
#    and wait for its pods to go. Per round: client-seen switch gap, failed requests, wall time;
#    the wall-time ratio. The client asks every BG_INTERVAL here (5 ms) to resolve the gap.
#
# Expect the recreate downtime near 0.2-0.6 s or near 2.2-2.6 s, with either tool: it is mostly the time
# until the first new pod is Ready, and the manifest's readiness probe runs every 2 s from the
# container's start, so a first probe that comes before the app listens costs a period. Averages
# of a few rounds move with that draw more than with the tool.
#
# `rollout` runs with ROLLOUT_ARGS (default --no-probe): its wall time includes its health gates
# (HTTP probes of the new pods, and for blue/green through the preview and live Services) unless
# --no-probe is passed, and kubectl gates nothing; so by default both tools do the same work.
# Times are figures to read, never asserted: the machine and other users of the cluster move them.
#
# Usage: benches/downtime_vs_kubectl.sh   (ROUNDS=3 INTERVAL=0.02 BG_INTERVAL=0.005
#                                          ROLLOUT_ARGS=--no-probe; ROLLOUT_BIN=path to skip the
#                                          release build; BENCH_KEEP=1 keeps the client logs)
# Needs a running devcluster (`target/debug/devcluster up`) and python3; creates and deletes
# namespaces bench-*.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
INTERVAL=${INTERVAL:-0.02}
BG_INTERVAL=${BG_INTERVAL:-0.005}
ROLLOUT_ARGS=${ROLLOUT_ARGS---no-probe}
export KUBECONFIG=${KUBECONFIG:-/var/tmp/rollout-devcluster/kubeconfig}
log() { printf 'bench: %s\n' "$*" >&2; }

command -v python3 >/dev/null || { log "python3 is needed for the polling client (benches/poll.py)"; exit 1; }
if [ -z "${ROLLOUT_BIN:-}" ]; then
  log "building rollout (release)"
  cargo build --release --bin rollout --quiet
  ROLLOUT_BIN=target/release/rollout
fi
kubectl get --raw /readyz >/dev/null 2>&1 || { log "no devcluster answers at $KUBECONFIG: run devcluster up"; exit 1; }

base="bench-$$-$RANDOM"
work=$(mktemp -d)
namespaces=()
pollers=()
cleanup() {
  for pid in "${pollers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then log "client logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# rollout with the run's flags, its progress kept in a file and shown on failure.
rollout_run() { # out-file args...
  local out=$1; shift
  # shellcheck disable=SC2086
  if ! NO_COLOR=1 "$ROLLOUT_BIN" "$@" $ROLLOUT_ARGS >"$out" 2>&1; then cat "$out" >&2; return 1; fi
}

# A namespace with the v1 time app, Ready.
deploy() { # namespace
  namespaces+=("$1")
  kubectl create namespace "$1" >/dev/null
  kubectl apply -n "$1" -f examples/time-app/k8s/time-app.yaml >/dev/null
  kubectl rollout status -n "$1" statefulset/time-app --timeout=300s >/dev/null
}
node_port() { kubectl get service time-app -n "$1" -o jsonpath='{.spec.ports[0].nodePort}'; }

# The polling client, in the background; returns once it has 5 answers from the old version.
poll_start() { # label port interval old-version
  local log=$work/$1.poll i
  rm -f "$work/$1.stop"
  python3 benches/poll.py --port "$2" --interval "$3" --max-requests 20000 --max-time 300 \
    --stop-file "$work/$1.stop" --out "$log" &
  poll_pid=$!
  pollers+=("$poll_pid")
  for i in $(seq 300); do
    if [ -f "$log" ] && [ "$(awk -v v="$4" '$2 ~ /^2/ && $3 == v { n++ } END { print n + 0 }' "$log")" -ge 5 ]; then return 0; fi
    sleep 0.1
  done
  log "the client got no answer from $4 through 127.0.0.1:$2 in 30s"; return 1
}
# Stops the client once it has seen the new version (or after 60s), half a second later.
poll_stop() { # label new-version
  local log=$work/$1.poll i
  for i in $(seq 600); do
    awk -v v="$2" '$2 ~ /^2/ && $3 == v { found = 1; exit } END { exit !found }' "$log" && break
    sleep 0.1
  done
  sleep 0.5
  touch "$work/$1.stop"
  wait "$poll_pid" || true
}
# From a client log: requests, failed requests (no 2xx), the gap in ms from the last old-version
# answer to the first new-version answer, old answers after the first new one, other versions.
client_figures() { # label old-version new-version
  awk -v old="$2" -v new="$3" '
    { n++; ok = ($2 ~ /^2/); if (!ok) failed++
      if (ok && $3 == new && first == "") first = $1
      if (ok && $3 == old) { if (first == "") last = $1; else late++ }
      if (ok && $3 != old && $3 != new) other++ }
    END { gap = (first == "" || last == "") ? "-" : sprintf("%.1f", (first - last) * 1000)
          printf "%d %d %s %d %d\n", n, failed, gap, late, other }' "$work/$1.poll"
}

cluster_version=$(kubectl version -o json 2>/dev/null | awk -F'"' '/gitVersion/ { v = $4 } END { print v }')
: >"$work/runs"

# ---------------------------------------------------------------------------------------------
# 1. Recreate.
ns="$base-recreate"
log "namespace $ns: time app v1, 3 replicas"
deploy "$ns"
port=$(node_port "$ns")
version=1
for round in $(seq "$ROUNDS"); do
  old=v$version; version=$((version + 1)); new=v$version
  log "recreate round $round: rollout recreate to time-app:$new"
  poll_start "recreate-rollout-$round" "$port" "$INTERVAL" "$old"
  t0=$(now)
  rollout_run "$work/recreate-rollout-$round.out" recreate time-app --image "time-app:$new" -n "$ns"
  t1=$(now)
  poll_stop "recreate-rollout-$round" "$new"
  reported=$("$ROLLOUT_BIN" status time-app -n "$ns" -o json | jq -r '.record.measured.downtimeMs // "-"')
  echo "recreate rollout $round $(elapsed "$t0" "$t1") $(client_figures "recreate-rollout-$round" "$old" "$new") $reported" >>"$work/runs"

  old=v$version; version=$((version + 1)); new=v$version
  log "recreate round $round: kubectl scale 0, wait, set image, scale 3, rollout status to time-app:$new"
  poll_start "recreate-kubectl-$round" "$port" "$INTERVAL" "$old"
  t0=$(now)
  kubectl scale -n "$ns" statefulset/time-app --replicas=0 >/dev/null
  kubectl wait -n "$ns" --for=delete pod -l app=time-app --timeout=300s >/dev/null
  kubectl set image -n "$ns" statefulset/time-app "app=time-app:$new" >/dev/null
  kubectl scale -n "$ns" statefulset/time-app --replicas=3 >/dev/null
  kubectl rollout status -n "$ns" statefulset/time-app --timeout=300s >/dev/null
  t1=$(now)
  poll_stop "recreate-kubectl-$round" "$new"
  echo "recreate kubectl $round $(elapsed "$t0" "$t1") $(client_figures "recreate-kubectl-$round" "$old" "$new") -" >>"$work/runs"
done
kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true

# ---------------------------------------------------------------------------------------------
# 2. Blue/green switch, each tool and round in a fresh namespace.
green_manifest() { # image: the app's StatefulSet as time-app-green, its pods labelled set=green
  awk 'doc == 2 { print } /^---$/ { doc++ }' examples/time-app/k8s/time-app.yaml | sed \
    -e 's/^  name: time-app$/  name: time-app-green/' \
    -e 's/^      app: time-app$/&\n      set: green/' \
    -e 's/^        app: time-app$/&\n        set: green/' \
    -e "s|image: time-app:v1|image: $1|"
}
for round in $(seq "$ROUNDS"); do
  ns="$base-bg-rollout-$round"
  log "blue/green round $round: namespace $ns, rollout bluegreen to time-app:v2"
  deploy "$ns"
  poll_start "bg-rollout-$round" "$(node_port "$ns")" "$BG_INTERVAL" v1
  t0=$(now)
  rollout_run "$work/bg-rollout-$round.out" bluegreen time-app --image time-app:v2 --auto-promote --scale-down-delay 0s -n "$ns"
  t1=$(now)
  poll_stop "bg-rollout-$round" v2
  echo "bluegreen rollout $round $(elapsed "$t0" "$t1") $(client_figures "bg-rollout-$round" v1 v2) -" >>"$work/runs"
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true

  ns="$base-bg-kubectl-$round"
  log "blue/green round $round: namespace $ns, kubectl by hand to time-app:v2"
  deploy "$ns"
  poll_start "bg-kubectl-$round" "$(node_port "$ns")" "$BG_INTERVAL" v1
  t0=$(now)
  blue=$(kubectl get -n "$ns" statefulset/time-app -o jsonpath='{.status.currentRevision}')
  kubectl patch -n "$ns" service time-app --type=json \
    -p "[{\"op\":\"replace\",\"path\":\"/spec/selector\",\"value\":{\"app\":\"time-app\",\"controller-revision-hash\":\"$blue\"}}]" >/dev/null
  green_manifest time-app:v2 | kubectl apply -n "$ns" -f - >/dev/null
  kubectl rollout status -n "$ns" statefulset/time-app-green --timeout=300s >/dev/null
  kubectl patch -n "$ns" service time-app --type=json \
    -p '[{"op":"replace","path":"/spec/selector","value":{"app":"time-app","set":"green"}}]' >/dev/null
  kubectl scale -n "$ns" statefulset/time-app --replicas=0 >/dev/null
  kubectl wait -n "$ns" --for=delete pod -l "controller-revision-hash=$blue" --timeout=300s >/dev/null
  t1=$(now)
  poll_stop "bg-kubectl-$round" v2
  echo "bluegreen kubectl $round $(elapsed "$t0" "$t1") $(client_figures "bg-kubectl-$round" v1 v2) -" >>"$work/runs"
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------------------------------------
# The figures. A runs line: part tool round wall requests failed gap late other reported.
echo "downtime vs kubectl: 3-replica time app, $ROUNDS rounds, devcluster $cluster_version"
echo "client: GET / to 127.0.0.1:<nodePort>, a new connection each, one at a time, 2 s timeout; every ${INTERVAL}s for recreate, every ${BG_INTERVAL}s for blue/green"
echo "rollout runs with: ${ROLLOUT_ARGS:-(no extra flags)} (its wall time includes its health gates unless --no-probe is passed; with --no-probe both tools do the same work)"
awk -v interval="$INTERVAL" -v bginterval="$BG_INTERVAL" '
  function avg(part, tool, what) { return c[part, tool, what] ? s[part, tool, what] / c[part, tool, what] : 0 }
  function add(part, tool, what, v) { if (v != "-") { s[part, tool, what] += v; c[part, tool, what]++ } }
  function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
  { part = $1; tool = $2; wall = $4; n = $5; failed = $6; gap = $7; late = $8; other = $9; rep = $10
    if (part != shown) { print (part == "recreate" ? "recreate (all pods down, new template, all up):" : "blue/green switch (green at full size, Service switched, blue to 0):"); shown = part }
    printf "  %-8s round %s  wall %7.2fs  client: %s %s, %d failed of %d requests%s%s%s\n", tool, $3, wall,
      (part == "recreate" ? "last old to first new answer" : "switch gap"), (gap == "-" ? "-" : gap "ms"), failed, n,
      (late ? sprintf(", %d OLD ANSWERS AFTER THE FIRST NEW", late) : ""), (other ? sprintf(", %d answers from another version", other) : ""),
      (rep != "-" ? "; rollout reported " rep "ms" : "")
    c[part, tool]++; add(part, tool, "wall", wall); add(part, tool, "gap", gap); add(part, tool, "failed", failed); add(part, tool, "rep", rep) }
  END {
    if (c["recreate", "rollout"] && c["recreate", "kubectl"]) {
      printf "recreate averages: rollout wall %.2fs, client-seen downtime %.0fms, %.1f failed requests, reported downtime %.0fms\n",
        avg("recreate", "rollout", "wall"), avg("recreate", "rollout", "gap"), avg("recreate", "rollout", "failed"),
        avg("recreate", "rollout", "rep")
      printf "                   kubectl wall %.2fs, client-seen downtime %.0fms, %.1f failed requests\n",
        avg("recreate", "kubectl", "wall"), avg("recreate", "kubectl", "gap"), avg("recreate", "kubectl", "failed")
      printf "recreate ratios rollout/kubectl: wall time %s, client-seen downtime %s (client resolution %.0fms)\n",
        ratio(avg("recreate", "rollout", "wall"), avg("recreate", "kubectl", "wall")),
        ratio(avg("recreate", "rollout", "gap"), avg("recreate", "kubectl", "gap")), interval * 1000
    }
    if (c["bluegreen", "rollout"] && c["bluegreen", "kubectl"]) {
      printf "blue/green averages: rollout switch gap %.1fms, %.1f failed requests, wall %.2fs; kubectl by hand switch gap %.1fms, %.1f failed requests, wall %.2fs\n",
        avg("bluegreen", "rollout", "gap"), avg("bluegreen", "rollout", "failed"), avg("bluegreen", "rollout", "wall"),
        avg("bluegreen", "kubectl", "gap"), avg("bluegreen", "kubectl", "failed"), avg("bluegreen", "kubectl", "wall")
      printf "blue/green wall-time ratio rollout/kubectl: %s (the client asks at most once per %.0fms: a gap near that is its resolution)\n",
        ratio(avg("bluegreen", "rollout", "wall"), avg("bluegreen", "kubectl", "wall")), bginterval * 1000
    }
  }' "$work/runs"
