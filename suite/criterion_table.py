#!/usr/bin/env python3
"""Prints the ratio table of the last `cargo bench -p pymalloc-suite --bench
micro` run from criterion's saved estimates (target/criterion/<group>/
<allocator>/<param>/new/estimates.json, under CARGO_TARGET_DIR if set):
pymalloc's median time over mimalloc's, the fastest peer's and System's.
Ratio < 1: pymalloc is faster.

    cargo bench -p pymalloc-suite --bench micro && python3 suite/criterion_table.py
"""
import json, os, sys

TARGET = os.environ.get("CARGO_TARGET_DIR",
                        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target"))
ROOT = os.path.join(os.path.abspath(TARGET), "criterion")
PEERS = ["system", "mimalloc", "jemalloc", "snmalloc", "rpmalloc"]


def median_ns(group, alloc, param):
    path = os.path.join(ROOT, group, alloc, param, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def main():
    if not os.path.isdir(ROOT):
        sys.exit("no criterion results: run `cargo bench -p pymalloc-suite --bench micro` first")
    print("| benchmark | pymalloc | fastest peer | vs mimalloc | vs fastest | vs System |")
    print("|---|---:|---|---:|---:|---:|")
    for group in sorted(os.listdir(ROOT)):
        base = os.path.join(ROOT, group, "pymalloc")
        if not os.path.isdir(base):
            continue
        params = sorted(os.listdir(base), key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p))
        for param in params:
            if param == "report":
                continue
            try:
                t = {a: median_ns(group, a, param) for a in ["pymalloc"] + PEERS}
            except FileNotFoundError:
                continue
            fastest = min(PEERS, key=t.get)
            py = t["pymalloc"]
            print(f"| {group}/{param} | {py:.1f} ns | {fastest} ({t[fastest]:.1f} ns) | "
                  f"{py / t['mimalloc']:.2f} | {py / t[fastest]:.2f} | {py / t['system']:.2f} |")


if __name__ == "__main__":
    main()
