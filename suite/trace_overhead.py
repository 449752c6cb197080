#!/usr/bin/env python3
"""The cost of `pymalloc::trace` on the suite's workloads: each workload of
`suite/benches/workloads.rs` run with pymalloc as the global allocator in
three ways: built without the `trace` feature ("none"), built with it and
tracing off ("off"), and sampling from the first allocation
(`PYMALLOC_TRACE_SAMPLE`, "sampling"); interleaved rounds, one fresh
process per run; medians and their ratios to "none". pymalloc only.

    python3 suite/trace_overhead.py [--rounds 3] [--mean 524288] [--frames 32] [--filter NAME]

Honours CARGO_TARGET_DIR (the feature build goes to its `trace/`).
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))


def build(*features):
    out = subprocess.run(["cargo", "bench", "-p", "pymalloc-suite", "--bench", "workloads", "--no-run",
                          *features], cwd=ROOT, capture_output=True, text=True, check=True).stderr
    return os.path.join(ROOT, re.search(r"Executable .*\((.*workloads-[0-9a-f]+)\)", out).group(1))


FAILED = []


def run(binary, env, *args):
    full = dict(os.environ, PYMALLOC_BENCH_ALLOC="pymalloc")
    full.pop("PYMALLOC_TRACE", None)
    full.pop("PYMALLOC_TRACE_SAMPLE", None)
    full.update(env)
    for _ in range(3):
        out = subprocess.run([binary, *args], env=full, capture_output=True, text=True)
        if out.returncode == 0:
            return [line.split("\t") for line in out.stdout.splitlines()]
        # Reported, then run again: a failure is the heap's, not timing's.
        FAILED.append((args, env, out.stderr.strip()[:200]))
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mean", type=int, default=512 * 1024)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    plain = build()
    binary = build("--features", "pymalloc/trace", "--target-dir", os.path.join(TARGET, "trace"))
    workloads = [w for (w,) in run(binary, {}, "list", args.filter)]
    modes = {"none": (plain, {}), "off": (binary, {}),
             "sampling": (binary, {"PYMALLOC_TRACE_SAMPLE": str(args.mean), "PYMALLOC_TRACE": str(args.frames)})}
    times = {}
    for r in range(args.rounds):
        for w in workloads:
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for m in order:
                got = run(*modes[m], "time", "=" + w)
                if got is None:
                    continue
                (_, _, _, secs, _), = got
                times.setdefault(w, {}).setdefault(m, []).append(float(secs))
    print(f"{args.rounds} interleaved rounds, medians; sampling: PYMALLOC_TRACE_SAMPLE={args.mean} "
          f"PYMALLOC_TRACE={args.frames}\n")
    print("| workload | no feature | off / none | sampling / none |")
    print("|---|---:|---:|---:|")
    offs, ons = [], []
    for w, t in times.items():
        if len(t) < 3:
            print(f"| {w} | (failed) | | |")
            continue
        none, off, on = (statistics.median(t[m]) for m in ("none", "off", "sampling"))
        offs.append(off / none)
        ons.append(on / none)
        print(f"| {w} | {none * 1e3:.1f} ms | {off / none:.3f} | {on / none:.3f} |")
    print(f"\ngeometric means: off {statistics.geometric_mean(offs):.3f}, "
          f"sampling {statistics.geometric_mean(ons):.3f}; max sampling {max(ons):.3f}")
    for args_, env, err in FAILED:
        print(f"failed (run again, up to 3 times): {' '.join(args_)} {env}: {err}")


if __name__ == "__main__":
    main()
