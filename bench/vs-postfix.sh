#!/usr/bin/env bash
# Postrider vs Postfix, side by side, in one run, with the peer harness
# (smtp-source -> relay -> smtp-sink; see $PEERS/README.md).
#
# usage: bench/vs-postfix.sh [--verify] [--rows "c1 c20 c50 c20r5 c20d"] [--static-route] [--no-build]
#   default       the standard matrix; for each row Postfix and Postrider run
#                 back to back (the order alternates per row), then a table with
#                 both and the ratios is printed (bench/compare.py)
#   --verify      correctness pass instead: c=20 r=5 and c=20 with the sink
#                 dumping every transaction; checks no message lost/duplicated
#   --rows LIST   subset of the matrix rows, e.g. --rows "c20"
#   --static-route  Postrider relays sink.example through a static [[routes]] entry,
#                 as Postfix's relayhost does; without it (the standard), Postrider
#                 resolves sink.example's MX through bench/dns.py on every delivery
#                 (served from its DNS cache after the first)
#   --no-build    use the existing release binary (or $POSTRIDER_BIN)
#   --no-postfix  Postrider only (e.g. for profiling)
#
# Environment: N (default 20000), SIZE (4096), REPS (3) as in the harness; quick
# mode: N=5000 REPS=1. PEERS: the harness folder (default /work/shared/bench/peers).
# CARGO_TARGET_DIR is honoured. POSTRIDER_BIN skips the build. PROFILE_CMD, if
# set, is run with the Postrider PID appended while the rows in PROFILE_ROWS (default
# "c20") run (e.g. PROFILE_CMD="perf record -g -o /tmp/p.data -p"), and stopped with SIGINT.
# LOADRUN_EXTRA: more loadrun options for both sides, e.g. "--quiet-wait 60".
# OUT: result folder (default /tmp/postrider-bench/vs-postfix-TIMESTAMP).
# Needs root (Postfix, cgroup accounting) and $PEERS/install.sh done once.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-/work/shared/bench/peers}
export N=${N:-20000} SIZE=${SIZE:-4096} REPS=${REPS:-3}
SMTP_PORT=2527 SINK_PORT=2626 HTTP_PORT=8027 DNS_PORT=5357 PROBE_SINK_IP=127.0.0.2
LOG_LEVEL=${LOG_LEVEL:-info}
OUT=${OUT:-/tmp/postrider-bench/vs-postfix-$(date +%Y%m%d-%H%M%S)}
DATA_DIR=${DATA_DIR:-/var/tmp/postrider-bench-data}   # same disk as /var/spool/postfix

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
VERIFY=0 BUILD=1 POSTFIX=1 ROWS="c1 c20 c50 c20r5 c20d" STATIC_ROUTE=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --verify) VERIFY=1; shift ;;
    --rows) ROWS=$2; shift 2 ;;
    --static-route) STATIC_ROUTE=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --no-postfix) POSTFIX=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "run as root (Postfix and cgroup accounting need it)" >&2; exit 1; }
[[ -x $PEERS/run-relay.sh && -x $PEERS/run-postfix.sh ]] || { echo "harness not found in $PEERS" >&2; exit 1; }
command -v smtp-source >/dev/null || { echo "run $PEERS/install.sh first" >&2; exit 1; }

if [[ -n ${POSTRIDER_BIN:-} ]]; then
  BIN=$POSTRIDER_BIN
else
  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  BIN=$TARGET/release/postrider
  if [[ $BUILD == 1 ]]; then
    echo "# building $ROOT (release)" >&2
    (cd "$ROOT" && cargo build --release --locked -p postrider >&2)
  fi
fi
[[ -x $BIN ]] || { echo "no postrider binary at $BIN" >&2; exit 1; }

mkdir -p "$OUT/postfix" "$OUT/postrider"
echo "# results -> $OUT" >&2
{
  echo "date $(date -Is)"
  echo "host $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "cpu $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  if [[ -n ${POSTRIDER_BIN:-} ]]; then
    echo "postrider $BIN (POSTRIDER_BIN: built outside this run; record its commit yourself)"
  else
    echo "postrider $BIN built from $ROOT at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  fi
  echo "postfix $(postconf -h mail_version 2>/dev/null || echo '?')"
  echo "N=$N SIZE=$SIZE REPS=$REPS rows: $ROWS verify=$VERIFY postrider_path=$([[ $STATIC_ROUTE == 1 ]] && echo static-route || echo dns)"
} > "$OUT/env.txt"
cat "$OUT/env.txt" >&2

DNS_PID= PR_PID= PROBE_PID= PROF_PID=
proc_alive() { [[ -n ${1:-} && -d /proc/$1 ]]; }
stop_pid() { # pid signal timeout_tenths
  local pid=$1 sig=${2:-TERM} n=${3:-100}
  proc_alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$n"); do proc_alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
wait_port() { # port [ip]
  for _ in $(seq 1 200); do
    ss -Hltn "sport = :$1" | grep -q "${2:-127.0.0.1}:$1" && return 0
    sleep 0.1
  done
  return 1
}
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  stop_pid "$PROF_PID" INT 300
  stop_pid "$PROBE_PID" TERM 100
  stop_pid "$PR_PID" TERM 350
  stop_pid "$DNS_PID" TERM 30
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $SMTP_PORT $HTTP_PORT; do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is busy" >&2; exit 1; fi
done
python3 "$HERE/dns.py" --listen "127.0.0.1:$DNS_PORT" --zone sink.example=127.0.0.1 \
  --zone "probe.example=$PROBE_SINK_IP" 2>>"$OUT/dns.log" &
DNS_PID=$!

# The latency probe's messages go to probe.example, whose MX is 127.0.0.2: nothing listens
# there, so Postrider defers them (connection refused) and the harness's sink (which counts
# smtp-source's messages only) never sees them. They stay queued; stop_postrider reports them.

start_postrider() { # tag
  rm -rf "$DATA_DIR"
  sed -e "s|@DATA_DIR@|$DATA_DIR|" -e "s|@SMTP_PORT@|$SMTP_PORT|" -e "s|@HTTP_PORT@|$HTTP_PORT|" \
      -e "s|@DNS_PORT@|$DNS_PORT|" -e "s|@SINK_PORT@|$SINK_PORT|g" -e "s|@LOG_LEVEL@|$LOG_LEVEL|" \
      "$HERE/postrider-bench.toml" > "$OUT/postrider/postrider.toml"
  if [[ $STATIC_ROUTE == 0 ]]; then
    # DNS on the path: drop the static route, sink.example is resolved through bench/dns.py.
    sed -i '/^\[\[routes\]\]/,$d' "$OUT/postrider/postrider.toml"
  fi
  "$BIN" serve --config "$OUT/postrider/postrider.toml" > "$OUT/postrider/log-$1.txt" 2>&1 &
  PR_PID=$!
  wait_port "$SMTP_PORT" || { echo "postrider did not start; see $OUT/postrider/log-$1.txt" >&2; exit 1; }
}

queue_len() {
  python3 - "$HTTP_PORT" <<'EOF'
import sys, urllib.request
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
except OSError:
    print("?"); sys.exit()
for line in body.splitlines():
    if line.startswith("postrider_queue_messages "):
        print(int(float(line.split()[1]))); break
else:
    print("?")
EOF
}

stop_postrider() { # tag
  local left=?
  local probes=0
  [[ -f $OUT/postrider/probe-$1.json ]] && probes=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print(sum(r["samples"] for r in p["runs"]))' "$OUT/postrider/probe-$1.json")
  for _ in $(seq 1 100); do   # bounded: 10 s; only the deferred probe messages may stay
    left=$(queue_len)
    [[ $left == "$probes" ]] && break
    sleep 0.1
  done
  echo "# postrider queue after $1: $left message(s), of which $probes deferred probe messages" >&2
  python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$HTTP_PORT/metrics" > "$OUT/postrider/metrics-$1.txt" 2>/dev/null || true
  echo "$1 queue_left=$left probe_msgs=$probes data_mib=$(du -sm "$DATA_DIR" | cut -f1)" >> "$OUT/postrider/queue.txt"
  stop_pid "$PR_PID" TERM 350
  PR_PID=
  rm -rf "$DATA_DIR"
}

row_args() {
  case $1 in
    c1) echo "-c 1" ;;
    c20) echo "-c 20" ;;
    c50) echo "-c 50" ;;
    c20r5) echo "-c 20 -r 5" ;;
    c20d) echo "-c 20 -d" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

run_postfix() { # loadrun args...
  [[ $POSTFIX == 1 ]] || return 0
  "$PEERS/run-postfix.sh" --out "$OUT/postfix" "$@" ${LOADRUN_EXTRA:-} || echo "# postfix row failed: $*" >&2
}

run_postrider() { # tag loadrun args...
  local tag=$1; shift
  start_postrider "$tag"
  local dns0; dns0=$(cpu_ticks "$DNS_PID")
  if [[ $tag == c20 ]]; then
    python3 "$HERE/probe.py" --relay "127.0.0.1:$SMTP_PORT" --to probe@probe.example \
      --size "$SIZE" --out "$OUT/postrider/probe-$tag.json" 2>>"$OUT/postrider/probe.log" &
    PROBE_PID=$!
  fi
  if [[ -n ${PROFILE_CMD:-} && " ${PROFILE_ROWS:-c20} " == *" $tag "* ]]; then
    # shellcheck disable=SC2086  # PROFILE_CMD is a command line
    $PROFILE_CMD "$PR_PID" > "$OUT/postrider/profile-$tag.log" 2>&1 &
    PROF_PID=$!
  fi
  "$PEERS/run-relay.sh" "127.0.0.1:$SMTP_PORT" "$SINK_PORT" --label postrider --pid "$PR_PID" \
    --out "$OUT/postrider" "$@" ${LOADRUN_EXTRA:-} || echo "# postrider row failed: $*" >&2
  stop_pid "$PROF_PID" INT 300; PROF_PID=
  stop_pid "$PROBE_PID" TERM 100; PROBE_PID=
  local dns1; dns1=$(cpu_ticks "$DNS_PID")
  echo "$tag $(awk -v t=$((dns1 - dns0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2fs", t/hz}')" >> "$OUT/dns-cpu.txt"
  stop_postrider "$tag"
}

i=0
if [[ $VERIFY == 1 ]]; then
  export REPS=1
  for args in "-c 20 -r 5" "-c 20"; do
    tag="verify-${args// /}"
    # shellcheck disable=SC2086
    run_postfix $args --verify
    # shellcheck disable=SC2086
    run_postrider "$tag" $args --verify
  done
else
  for row in $ROWS; do
    args=$(row_args "$row")
    # alternate the order so slow drift of the shared machine hits both sides alike
    if (( i % 2 == 0 )); then
      # shellcheck disable=SC2086
      run_postfix $args; run_postrider "$row" $args
    else
      # shellcheck disable=SC2086
      run_postrider "$row" $args; run_postfix $args
    fi
    i=$((i + 1))
  done
fi

python3 "$HERE/compare.py" "$OUT" | tee "$OUT/table.md"
