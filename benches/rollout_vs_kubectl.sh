#!/usr/bin/env bash
# Benchmark: `rollout rolling` against `kubectl apply` + `kubectl rollout status` for the same
# change (a new image on a 5-replica time app), on the running devcluster, in one run.
#
# Prints, per tool and round, the wall time; then the wall-time ratio, the orchestrator's delay
# from a pod becoming Ready to the next partition write (p50, p99, taken from watches of the pods
# and the StatefulSet, so both ends see the same API server delay), the API requests per rollout
# (apiserver_request_total before and after, the background rate of the idle cluster subtracted:
# an estimate, since the controllers and the node agent work for both tools and other users of
# the cluster add noise), and the CLI's peak memory (/usr/bin/time -v).
#
# Usage: benches/rollout_vs_kubectl.sh            (ROUNDS=3 REPLICAS=5; ROLLOUT_BIN=path to skip
#                                                  the release build)
# Needs a running devcluster (`target/debug/devcluster up`); creates and deletes namespace bench-*.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
REPLICAS=${REPLICAS:-5}
export KUBECONFIG=${KUBECONFIG:-/var/tmp/rollout-devcluster/kubeconfig}
log() { printf 'bench: %s\n' "$*" >&2; }

if [ ! -x /usr/bin/time ]; then
  log "installing GNU time for peak-memory figures"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
if [ -z "${ROLLOUT_BIN:-}" ]; then
  log "building rollout (release)"
  cargo build --release --bin rollout --quiet
  ROLLOUT_BIN=target/release/rollout
fi
kubectl get --raw /readyz >/dev/null 2>&1 || { log "no devcluster answers at $KUBECONFIG: run devcluster up"; exit 1; }

ns="bench-$$-$RANDOM"
work=$(mktemp -d)
watchers=()
cleanup() {
  for pid in "${watchers[@]}"; do kill "$pid" 2>/dev/null || true; done
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  if [ -n "${BENCH_KEEP:-}" ]; then log "watch logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

manifest() { # image
  sed -e "s/replicas: 3/replicas: $REPLICAS/" -e "s|image: time-app:v1|image: $1|" examples/time-app/k8s/time-app.yaml
}
requests_total() {
  kubectl get --raw /metrics | awk '/^apiserver_request_total\{/ { s += $NF } END { printf "%d\n", s }'
}
now() { echo "$EPOCHREALTIME"; }

log "namespace $ns: time app with $REPLICAS replicas"
kubectl create namespace "$ns" >/dev/null
manifest time-app:v1 | kubectl apply -n "$ns" -f - >/dev/null
kubectl rollout status -n "$ns" statefulset/time-app --timeout=300s >/dev/null

# Watches with local receive times: pods (name, revision, Ready) and the set (partition).
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
kubectl get pods -n "$ns" -w -o jsonpath='{.metadata.name} {.metadata.labels.controller-revision-hash} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' \
  | stamp >"$work/pods.log" &
watchers+=($!)
kubectl get statefulset time-app -n "$ns" -w -o jsonpath='{.spec.updateStrategy.rollingUpdate.partition} {.status.updateRevision}{"\n"}' \
  | stamp >"$work/sts.log" &
watchers+=($!)

log "measuring the idle cluster's request rate for 10s"
idle_a=$(requests_total); idle_t0=$(now); sleep 10; idle_b=$(requests_total); idle_t1=$(now)
idle_rate=$(awk -v a="$idle_a" -v b="$idle_b" -v t0="$idle_t0" -v t1="$idle_t1" 'BEGIN { printf "%.3f", (b - a) / (t1 - t0) }')

: >"$work/runs"
version=1
for round in $(seq "$ROUNDS"); do
  version=$((version + 1))
  log "round $round: rollout rolling to time-app:v$version"
  r0=$(requests_total); t0=$(now)
  # The kube client logs one "requesting" line per API request: the CLI's own count.
  RUST_LOG=warn,kube_client::client::builder=debug NO_COLOR=1 \
    /usr/bin/time -v -o "$work/time.$round" "$ROLLOUT_BIN" rolling time-app --image "time-app:v$version" -n "$ns" --no-probe \
    >"$work/rollout.$round.out" 2>&1 || { cat "$work/rollout.$round.out" >&2; exit 1; }
  t1=$(now); r1=$(requests_total)
  rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.$round")
  echo "rollout $round $t0 $t1 $r0 $r1 $rss" >>"$work/runs"

  version=$((version + 1))
  log "round $round: kubectl apply + rollout status to time-app:v$version"
  r0=$(requests_total); t0=$(now)
  manifest "time-app:v$version" | kubectl apply -n "$ns" -f - >/dev/null
  kubectl rollout status -n "$ns" statefulset/time-app --timeout=600s >/dev/null
  t1=$(now); r1=$(requests_total)
  echo "kubectl $round $t0 $t1 $r0 $r1 -" >>"$work/runs"
done
sleep 1

echo "rollout vs kubectl: $REPLICAS replicas, $ROUNDS rounds, devcluster $(kubectl version -o json 2>/dev/null | awk -F'"' '/gitVersion/ { v = $4 } END { print v }')"
awk -v idle="$idle_rate" '
  { wall = $4 - $3; req = $6 - $5; est = req - idle * wall
    printf "  %-8s round %s  wall %7.2fs  API requests %5d (about %d above the idle rate)%s\n", $1, $2, wall, req, est, ($7 == "-" ? "" : "  peak RSS " $7 " KiB")
    n[$1]++; w[$1] += wall; r[$1] += est; if ($7 != "-" && $7 > rss) rss = $7 }
  END {
    printf "wall time: rollout %.2fs, kubectl %.2fs on average; ratio rollout/kubectl %.2f\n", w["rollout"] / n["rollout"], w["kubectl"] / n["kubectl"], (w["rollout"] / n["rollout"]) / (w["kubectl"] / n["kubectl"])
    printf "API requests per rollout (estimate, idle rate %.1f/s subtracted): rollout %d, kubectl %d\n", idle, r["rollout"] / n["rollout"], r["kubectl"] / n["kubectl"]
    printf "rollout peak memory: %d KiB\n", rss
  }' "$work/runs"

# The CLI's own requests, from its kube client log: per run, and by verb and resource.
cat "$work"/rollout.*.out | awk -v rounds="$ROUNDS" '
  /requesting/ {
    method = $0; sub(/.*http\.method=/, "", method); sub(/ .*/, "", method)
    url = $0; sub(/.*http\.url=/, "", url); sub(/ .*/, "", url)
    path = url; sub(/^https?:\/\/[^\/]*/, "", path); sub(/\?.*/, "", path)
    n = split(path, seg, "/"); resource = seg[n]
    for (i = 1; i < n; i++) if (seg[i] == "namespaces" && i + 2 <= n) { resource = seg[i + 2]; break }
    if (url ~ /watch=true/) method = "WATCH"
    key = method " " resource; count[key]++; total++ }
  END {
    printf "rollout'"'"'s own API requests per rollout (its kube client log): %.1f\n", total / rounds
    for (k in count) printf "    %-32s %5.1f\n", k, count[k] / rounds
  }'

# Ready -> next partition write, during the rollout runs only: when the partition goes down from
# p (< replicas), the pod it released last was ordinal p; the delay is from that pod turning
# Ready on the update revision to the write that lowered the partition. Both watches are merged
# into one time-ordered stream (pod lines tagged P, StatefulSet lines S).
sort -n -k1,1 <(sed 's/^\([^ ]*\) /\1 P /' "$work/pods.log") <(sed 's/^\([^ ]*\) /\1 S /' "$work/sts.log") >"$work/events.log"
awk -v replicas="$REPLICAS" '
  FILENAME == ARGV[1] { if ($1 == "rollout") { n++; start[n] = $3; end[n] = $4 }; next }
  $2 == "P" { # time P name revision ready
    if ($5 == "True" && $4 != "" && !(($3, $4) in ready)) ready[$3, $4] = $1
    if ($5 != "True") delete ready[$3, $4]
    next }
  $2 == "S" { # time S partition updateRevision
    t = $1; p = $3; rev = $4
    if (p == "" || (seen && p == last)) next
    inrun = 0; for (i = 1; i <= n; i++) if (t >= start[i] && t <= end[i]) inrun = 1
    if (inrun && seen && p < last && last < replicas) {
      pod = "time-app-" last
      if ((pod, rev) in ready) { d = t - ready[pod, rev]; if (d >= 0) delays[++m] = d }
    }
    last = p; seen = 1 }
  END {
    if (m == 0) { print "Ready -> next partition write: no samples (see the watch logs, BENCH_KEEP=1)"; exit }
    for (i = 2; i <= m; i++) { v = delays[i]; for (j = i - 1; j >= 1 && delays[j] > v; j--) delays[j + 1] = delays[j]; delays[j + 1] = v }
    p50 = delays[int((m * 50 + 99) / 100)]; p99 = delays[int((m * 99 + 99) / 100)]
    printf "Ready -> next partition write (%d samples): p50 %.1fms, p99 %.1fms, max %.1fms\n", m, p50 * 1000, p99 * 1000, delays[m] * 1000
  }' "$work/runs" "$work/events.log"
