#!/usr/bin/env python3
"""The cost of `pymalloc::trace` sampling on the suite's workloads: each
workload of `suite/benches/workloads.rs` run with pymalloc as the global
allocator, with and without `PYMALLOC_TRACE_SAMPLE` (sampling at that mean
from the first allocation), in interleaved rounds, one fresh process per
run; medians and their ratio. pymalloc only (the peers are not run).

    python3 tools/trace_overhead.py [--rounds 3] [--mean 524288] [--frames 32] [--filter NAME]

Honours CARGO_TARGET_DIR.
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build():
    out = subprocess.run(["cargo", "bench", "-p", "pymalloc-suite", "--bench", "workloads", "--no-run"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stderr
    return os.path.join(ROOT, re.search(r"Executable .*\((.*workloads-[0-9a-f]+)\)", out).group(1))


def run(binary, env, *args):
    env = dict(os.environ, PYMALLOC_BENCH_ALLOC="pymalloc", **env)
    env.pop("PYMALLOC_TRACE", None)
    if "PYMALLOC_TRACE_SAMPLE" not in env or not env["PYMALLOC_TRACE_SAMPLE"]:
        env.pop("PYMALLOC_TRACE_SAMPLE", None)
    out = subprocess.run([binary, *args], env=env, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mean", type=int, default=512 * 1024)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    binary = build()
    workloads = [w for (w,) in run(binary, {}, "list", args.filter)]
    modes = {"off": {}, "sampling": {"PYMALLOC_TRACE_SAMPLE": str(args.mean),
                                     "PYMALLOC_TRACE": str(args.frames)}}
    times = {}
    for r in range(args.rounds):
        for w in workloads:
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for m in order:
                (_, _, _, secs, _), = run(binary, modes[m], "time", "=" + w)
                times.setdefault(w, {}).setdefault(m, []).append(float(secs))
    print(f"{args.rounds} interleaved rounds, medians; sampling: PYMALLOC_TRACE_SAMPLE={args.mean} "
          f"PYMALLOC_TRACE={args.frames}\n")
    print("| workload | tracing off | sampling | ratio |")
    print("|---|---:|---:|---:|")
    ratios = []
    for w, t in times.items():
        off, on = statistics.median(t["off"]), statistics.median(t["sampling"])
        ratios.append(on / off)
        print(f"| {w} | {off * 1e3:.1f} ms | {on * 1e3:.1f} ms | {on / off:.3f} |")
    geo = statistics.geometric_mean(ratios)
    print(f"\ngeometric mean of the ratios: {geo:.3f}; max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
