#!/usr/bin/env bash
# Records a CPU flamegraph with `perf record -e cpu-clock -g` and renders it
# with inferno. cpu-clock is a software event: it works where hardware
# counters are not available (VMs, containers).
#
#   bash perf/flamegraph.sh serve [SECONDS]        the protected front under wrk
#   bash perf/flamegraph.sh demo [SECONDS]         the whole demo process
#   bash perf/flamegraph.sh bench NAME [SECONDS]   a criterion bench (e.g. layers)
#
# Writes, under target/flamegraph/:
#   <name>.svg       the flamegraph (open it in a browser; it is searchable)
#   <name>.top.txt   the symbols with the most samples of their own (perf report)
#   <name>.wrk.txt   wrk's figures (serve only)
#
# Builds into its own target directory (target/flamegraph/build) with debug
# symbols and frame pointers, so that `-g` (frame-pointer unwinding) gives
# whole stacks; CALL_GRAPH=dwarf unwinds with DWARF instead (bigger, slower,
# sees through code built without frame pointers, like std). FREQ sets the
# sampling frequency (default 999 Hz), PORT the port of `serve` (18080),
# CONNECTIONS wrk's connections (32).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-serve}
case "$mode" in
  serve|demo) secs=${2:-20}; name=$mode ;;
  bench) bench=${2:?usage: perf/flamegraph.sh bench NAME [SECONDS]}; secs=${3:-10}; name=bench-$bench ;;
  *) echo "usage: perf/flamegraph.sh serve|demo [SECONDS] | bench NAME [SECONDS]" >&2; exit 2 ;;
esac

command -v perf >/dev/null || { echo "missing perf: install it (apt-get install linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  cargo install inferno --locked
fi

out=target/flamegraph
mkdir -p "$out"
export CARGO_TARGET_DIR=$out/build
export CARGO_PROFILE_RELEASE_DEBUG=true CARGO_PROFILE_BENCH_DEBUG=true
export RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
data=$out/$name.data
call_graph=${CALL_GRAPH:-fp}
if [ "$call_graph" = fp ]; then graph=(-g); else graph=(--call-graph "$call_graph"); fi

record() {
  perf record -e cpu-clock -F "${FREQ:-999}" "${graph[@]}" -o "$data" -- "$@"
}

case "$mode" in
  serve)
    command -v wrk >/dev/null || { echo "missing wrk: install it (apt-get install wrk), or profile 'demo'" >&2; exit 1; }
    cargo build --release --locked -p tenlives-perf
    port=${PORT:-18080}
    record "$CARGO_TARGET_DIR/release/tenlives-perf" serve --seconds $((secs + 4)) --port "$port" &
    recorder=$!
    # Wait for the front to listen (at most 10 s).
    for _ in $(seq 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
      sleep 0.1
    done
    wrk -t1 -c"${CONNECTIONS:-32}" -d"${secs}s" --latency "http://127.0.0.1:$port/" | tee "$out/$name.wrk.txt"
    wait "$recorder"
    ;;
  demo)
    cargo build --release --locked -p tenlives-perf
    record "$CARGO_TARGET_DIR/release/tenlives-perf" demo --seconds "$secs" --quiet --out "$out/demo-output"
    ;;
  bench)
    exe=$(cargo bench --locked -p tenlives-benches --bench "$bench" --no-run 2>&1 \
      | grep -o "$CARGO_TARGET_DIR/release/deps/$bench-[0-9a-f]*" | head -n 1)
    [ -n "$exe" ] || { echo "no bench executable found for '$bench'" >&2; exit 1; }
    record "$exe" --bench --profile-time "$secs" ${FILTER:+"$FILTER"}
    ;;
esac

perf script -i "$data" 2>/dev/null | inferno-collapse-perf > "$out/$name.folded"
inferno-flamegraph --title "tenlives-perf $name (perf cpu-clock)" < "$out/$name.folded" > "$out/$name.svg"
perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | sed -n '1,60p' > "$out/$name.top.txt"
echo
echo "flamegraph: $out/$name.svg"
echo "top symbols (self time): $out/$name.top.txt"
head -n 15 "$out/$name.top.txt"
