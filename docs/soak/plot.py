#!/usr/bin/env python3
"""Plots the real-time soak's resident memory and open descriptors.

Reads the `process` samples of a `tenlives-perf soak` run's summary.json
(`at_s`, `rss_bytes`, `fds`, sampled by the process itself), writes them as
CSV and draws them as one SVG with two panels, time on the x axis:

    python3 docs/soak/plot.py SUMMARY_JSON OUT_CSV OUT_SVG [TITLE]

Standard library only.
"""

import json
import sys


def load(path):
    with open(path) as f:
        summary = json.load(f)
    samples = [(s["at_s"], s["rss_bytes"], s["fds"]) for s in summary["process"]]
    if not samples:
        sys.exit(f"{path}: no process samples (not a soak run?)")
    t0 = samples[0][0]
    return [(t - t0, rss, fds) for (t, rss, fds) in samples], summary


def nice_ceiling(v):
    """A round number at or above v, for an axis."""
    if v <= 0:
        return 1
    step = 1
    while step * 10 <= v:
        step *= 10
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= v:
            return m * step
    return 10 * step


def panel(out, x0, y0, w, h, xs, ys, x_max, y_max, label, unit, colour):
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = y_max * i / 4
        y = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{v:g}</text>'
        )
    for i in range(7):
        v = x_max * i / 6
        x = x0 + w * i / 6
        out.append(
            f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle" font-size="11">{v / 60:.0f}</text>'
        )
    points = " ".join(
        f"{x0 + w * x / x_max:.1f},{y0 + h - h * y / y_max:.1f}" for x, y in zip(xs, ys)
    )
    out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    out.append(
        f'<text x="{x0}" y="{y0 - 8}" font-size="13" font-weight="bold">{label} ({unit})</text>'
    )


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    samples, summary = load(sys.argv[1])
    title = sys.argv[4] if len(sys.argv) > 4 else "tenlives-perf soak"
    with open(sys.argv[2], "w") as f:
        f.write("seconds,rss_bytes,open_fds\n")
        for t, rss, fds in samples:
            f.write(f"{t:.1f},{rss},{fds}\n")
    ts = [t for t, _, _ in samples]
    rss = [r / 1048576 for _, r, _ in samples]
    fds = [d for _, _, d in samples]
    x_max = max(ts[-1], 1)
    w, h, left = 760, 220, 70
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w + 30}" height="{2 * h + 175}" '
        'font-family="sans-serif">',
        f'<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">{title}</text>',
    ]
    panel(out, left, 60, w, h, ts, rss, x_max, nice_ceiling(max(rss) * 1.2),
          "Resident memory (VmRSS)", "MiB", "#1f77b4")
    panel(out, left, 60 + h + 60, w, h, ts, fds, x_max, nice_ceiling(max(fds) * 1.2),
          "Open file descriptors", "count", "#d62728")
    out.append(
        f'<text x="{left + w / 2}" y="{2 * h + 165}" text-anchor="middle" font-size="12">minutes</text>'
    )
    out.append("</svg>")
    with open(sys.argv[3], "w") as f:
        f.write("\n".join(out) + "\n")
    print(
        f"{len(samples)} samples over {x_max:.0f} s; RSS {min(rss):.1f}-{max(rss):.1f} MiB, "
        f"descriptors {min(fds)}-{max(fds)}"
    )


if __name__ == "__main__":
    main()
