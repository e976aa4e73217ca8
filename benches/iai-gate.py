#!/usr/bin/env python3
"""The instruction-count regression gate.

Runs the callgrind benchmarks (`cargo bench -p tenlives-benches --bench iai`),
reads each benchmark's instruction count (Ir) from iai-callgrind's JSON
output, and compares it with the committed baseline,
`benches/iai-baselines.json` ({"benchmark name": Ir, ...}).

Prints a table of every benchmark (baseline, current, change, and where a
peer does the same job, the ratio tenlives / peer), then exits

  0  when every `tenlives_*` benchmark is at most 5 % above its baseline,
  1  when one is more than 5 % above, or has no baseline,
  2  when the benchmarks could not be built or run.

Peers and the floor are reported, never gated: their counts belong to other
crates. `--update` rewrites the baseline file from this run (and exits 0);
see docs/performance.md for when that is legitimate.

`--features tracing` runs the layer rows (`tenlives_layer*`: with the
feature the bench has no other rows) built with the benches' feature `tracing` (tenlives-tokio's spans compiled in, no
subscriber) and gates them against their own baselines, named
`<row> [tracing]`: what the spans cost with nobody listening is bounded
too. `--update` with it rewrites those baselines only.

Standard library only: it runs wherever python3 and cargo do.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = os.path.join(ROOT, "benches", "iai-baselines.json")
COMMAND = [
    "cargo", "bench", "--locked", "-p", "tenlives-benches", "--bench", "iai",
    "--", "--output-format=json",
]
# A tenlives benchmark fails the gate above this rise over its baseline.
LIMIT_PCT = 5.0
# Gated benchmarks: every name with this prefix.
GATED = "tenlives_"
# The peer doing the same job as a tenlives benchmark, for the ratio column.
PEERS = {
    "tenlives_breaker_time_window": "failsafe_breaker_default",
    "tenlives_breaker_consecutive": "failsafe_breaker_consecutive",
    "tenlives_bulkhead": "tokio_semaphore",
    "tenlives_event_push": "crossbeam_array_queue_force_push",
    "tenlives_lane_push": "crossbeam_array_queue_force_push",
    "tenlives_lane_producer_push": "crossbeam_array_queue_force_push",
    "tenlives_rate_check": "governor_direct_check",
    "tenlives_rate_check_n": "governor_check_n",
    "tenlives_keyed_check_1k": "governor_keyed_check_1k",
    # The secondary rows: tenlives given its time, governor on its fake clock
    # (failsafe has no clock to fake: its rows pair with the headline only).
    "tenlives_rate_check_no_clock_read": "governor_direct_check_fake_clock",
    "tenlives_rate_check_n_no_clock_read": "governor_check_n_fake_clock",
    "tenlives_keyed_check_1k_no_clock_read": "governor_keyed_check_1k_fake_clock",
}
FLOOR = "floor_fetch_add"


def command(features):
    """The cargo command: every row, or with `features` the layer rows (the
    bench built with a feature runs those only)."""
    if not features:
        return COMMAND
    i = COMMAND.index("--bench")
    return COMMAND[:i] + ["--features", features] + COMMAND[i:]


def suffix(features):
    return f" [{features}]" if features else ""


def run_benchmarks(features=None):
    """Runs the benchmarks; returns {name: Ir} in the order they ran (names
    suffixed with the features they were built with)."""
    cmd = command(features)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        sys.stdout.write(done.stdout)
        print(f"iai-gate: `{' '.join(cmd)}` failed (exit {done.returncode})",
              file=sys.stderr)
        sys.exit(2)
    counts = {}
    for line in done.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        summary = json.loads(line)
        counts[summary["function_name"] + suffix(features)] = instructions(summary)
    if not counts:
        sys.stderr.write(done.stderr)
        print("iai-gate: the benchmarks printed no JSON summary", file=sys.stderr)
        sys.exit(2)
    return counts


def instructions(summary):
    """The Ir of this run from one benchmark's summary.

    `metrics` is {"Both": [new, old]} when iai-callgrind compared with its own
    previous run, {"Left": new} when there was none.
    """
    for profile in summary["profiles"]:
        if profile["tool"] != "Callgrind":
            continue
        metrics = profile["summaries"]["total"]["summary"]["Callgrind"]["Ir"]["metrics"]
        new = metrics["Both"][0] if "Both" in metrics else metrics["Left"]
        return int(new["Int"])
    raise ValueError(f"no callgrind profile for {summary['function_name']}")


def load_baselines():
    try:
        with open(BASELINES) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def table(counts, baselines, gate):
    """The rows to print and the names of the failing benchmarks (none
    unless `gate`)."""
    failing = []
    rows = [("benchmark", "baseline Ir", "current Ir", "change", "vs peer (Ir ratio)",
             "x floor")]
    floor = counts.get(FLOOR)
    for name, ir in counts.items():
        base = baselines.get(name)
        gated = name.startswith(GATED)
        if base is None:
            change = "no baseline"
            if gated and gate:
                failing.append(name)
                change += " FAIL"
        else:
            pct = (ir - base) * 100.0 / base if base else 0.0
            change = f"{pct:+.1f} %"
            if gated and gate and pct > LIMIT_PCT:
                failing.append(name)
                change += " FAIL"
        peer = PEERS.get(name)
        vs = ""
        if peer and counts.get(peer):
            vs = f"{ir / counts[peer]:.2f}x {peer}"
        x_floor = f"{ir / floor:.1f}" if floor else ""
        rows.append((name, "-" if base is None else str(base), str(ir), change, vs, x_floor))
    return rows, failing


def print_table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 2, 3, 5}

    def line(cells):
        out = [c.rjust(w) if i in right else c.ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(out) + " |"

    print(line(rows[0]))
    print("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|")
    for r in rows[1:]:
        print(line(r))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true",
                        help="rewrite benches/iai-baselines.json from this run")
    parser.add_argument("--features", choices=["tracing"],
                        help="run the layer rows built with this feature of the benches, "
                             "gated against their own baselines")
    args = parser.parse_args()

    print(f"iai-gate: {' '.join(command(args.features))}", flush=True)
    counts = run_benchmarks(args.features)
    baselines = load_baselines()
    rows, failing = table(counts, baselines, gate=not args.update)
    print_table(rows)

    mine = suffix(args.features)
    for name in baselines:
        # Each run speaks for its own rows: plain names without features,
        # `[feature]` names with them.
        ours = name.endswith(mine) if mine else not name.endswith("]")
        if ours and name not in counts:
            print(f"note: baseline {name} has no benchmark any more")

    if args.update:
        # Rewrite this run's rows only: the other build's baselines stay.
        kept = {n: ir for n, ir in baselines.items()
                if (not n.endswith(mine) if mine else n.endswith("]"))}
        kept.update(counts)
        with open(BASELINES, "w") as f:
            json.dump(dict(sorted(kept.items())), f, indent=2)
            f.write("\n")
        print(f"iai-gate: wrote {len(counts)} baselines to {os.path.relpath(BASELINES, ROOT)}")
        return 0
    if failing:
        print(f"iai-gate: FAILED: {', '.join(failing)} rose more than {LIMIT_PCT:g} % "
              "above the baseline (or has none); see docs/performance.md")
        return 1
    print(f"iai-gate: ok: no tenlives benchmark rose more than {LIMIT_PCT:g} % above its baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
