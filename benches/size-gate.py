#!/usr/bin/env python3
"""The code-size gate for the embedded target.

Builds `benches/size/` (one tiny `#![no_std] #![no_main]` binary per engine
primitive) in release for `thumbv7em-none-eabihf`, reads the size of each
binary's `.text` section from its ELF section headers, and compares it with
the committed baselines, `benches/size-baselines.json`.

Prints a table (baseline, current, change; `.rodata` and RAM beside it for
information), then exits

  0  when every primitive's `.text` is at most 5 % above its baseline,
  1  when one is more than 5 % above, or has no baseline,
  2  when the binaries could not be built or read.

`--update` rewrites the baseline file from this build (and exits 0): do it
when a change is meant to grow a primitive, and say why in the commit.
`--no-build` measures what is already built.

The binaries go under `$CARGO_TARGET_DIR/size` (or `target/size` at the
repository's root), so a CI run keeps them beside its other outputs.

Standard library only: no binutils needed, the ELF header is read here.
"""

import argparse
import json
import os
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATE = os.path.join(ROOT, "benches", "size")
BASELINES = os.path.join(ROOT, "benches", "size-baselines.json")
TARGET = "thumbv7em-none-eabihf"
# Binaries measured, in the order printed. `empty` is the floor every
# binary carries (its `_start` and panic handler); it is reported, not gated.
PRIMITIVES = ["breaker", "rate_limiter", "bulkhead", "event_ring", "retry_budget", "throttle"]
FLOOR = "empty"
LIMIT_PCT = 5.0


def target_dir():
    base = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(os.path.abspath(base), "size")


def build():
    command = [
        "cargo", "build", "--locked", "--release", "--target", TARGET,
        "--bins", "--target-dir", target_dir(),
    ]
    done = subprocess.run(command, cwd=CRATE)
    if done.returncode != 0:
        print(f"size-gate: `{' '.join(command)}` failed (exit {done.returncode})",
              file=sys.stderr)
        sys.exit(2)


def sections(path):
    """{section name: (size, flags, type)} of a 32- or 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    if data[5] != 1:
        raise ValueError(f"{path}: not little-endian")
    if is64:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)

    def header(i):
        at = shoff + i * shentsize
        if is64:
            name, kind, flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, at)
        else:
            name, kind, flags, _addr, offset, size = struct.unpack_from("<IIIIII", data, at)
        return name, kind, flags, offset, size

    _, _, _, str_offset, _ = header(shstrndx)
    out = {}
    for i in range(1, shnum):
        name, kind, flags, _offset, size = header(i)
        end = data.index(b"\0", str_offset + name)
        out[data[str_offset + name:end].decode()] = (size, flags, kind)
    return out


def measure(name):
    path = os.path.join(target_dir(), TARGET, "release", name)
    try:
        found = sections(path)
    except (OSError, ValueError) as e:
        print(f"size-gate: cannot read {path}: {e}", file=sys.stderr)
        sys.exit(2)
    SHF_ALLOC, SHF_WRITE, SHF_EXECINSTR = 0x2, 0x1, 0x4
    text = sum(size for n, (size, flags, _) in found.items()
               if flags & SHF_EXECINSTR and flags & SHF_ALLOC)
    rodata = sum(size for n, (size, flags, _) in found.items()
                 if flags & SHF_ALLOC and not flags & (SHF_WRITE | SHF_EXECINSTR))
    ram = sum(size for n, (size, flags, _) in found.items()
              if flags & SHF_ALLOC and flags & SHF_WRITE)
    return {"text": text, "rodata": rodata, "ram": ram}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true",
                        help="write this build's sizes as the new baselines")
    parser.add_argument("--no-build", action="store_true",
                        help="measure the binaries already built")
    args = parser.parse_args()

    if not args.no_build:
        build()
    figures = {name: measure(name) for name in [FLOOR] + PRIMITIVES}

    if args.update:
        with open(BASELINES, "w") as f:
            json.dump({name: figures[name]["text"] for name in [FLOOR] + PRIMITIVES},
                      f, indent=2)
            f.write("\n")
        print(f"size-gate: wrote {os.path.relpath(BASELINES, ROOT)}")

    try:
        with open(BASELINES) as f:
            baselines = json.load(f)
    except FileNotFoundError:
        baselines = {}

    print(f".text of each primitive's binary on {TARGET} (opt-level s, fat LTO), bytes;"
          f" gate: at most {LIMIT_PCT:g} % above benches/size-baselines.json")
    print(f"{'binary':<14}{'baseline':>10}{'text':>8}{'change':>9}{'engine':>8}"
          f"{'rodata':>8}{'ram':>6}  verdict")
    floor = figures[FLOOR]["text"]
    failures = []
    for name in [FLOOR] + PRIMITIVES:
        fig = figures[name]
        base = baselines.get(name)
        change = "" if base is None else f"{(fig['text'] - base) * 100.0 / base:+.1f}%"
        engine = "" if name == FLOOR else str(fig["text"] - floor)
        if name == FLOOR:
            verdict = "floor, not gated"
        elif base is None:
            verdict = "FAIL: no baseline"
            failures.append(name)
        elif fig["text"] > base * (1 + LIMIT_PCT / 100.0):
            verdict = f"FAIL: {fig['text']} bytes, above {base} + {LIMIT_PCT:g} %"
            failures.append(name)
        else:
            verdict = "ok"
        print(f"{name:<14}{'' if base is None else base:>10}{fig['text']:>8}{change:>9}"
              f"{engine:>8}{fig['rodata']:>8}{fig['ram']:>6}  {verdict}")
    if failures:
        print(f"size-gate: {len(failures)} primitive(s) over budget: {', '.join(failures)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
