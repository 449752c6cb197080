#!/usr/bin/env python3
"""Real programs under LD_PRELOAD: glibc (no preload), pymalloc
(libpymalloc_preload.so), Debian's mimalloc and jemalloc, run in
interleaved shuffled rounds; median wall time and peak RSS per program,
and pymalloc's ratios (< 1: pymalloc faster / smaller).

    apt-get install -y libmimalloc2.0 libjemalloc2
    cargo build --release -p pymalloc-preload
    python3 preload/bench.py [--rounds 5]
"""
import argparse, os, random, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = {
    "glibc": None,
    "pymalloc": os.path.join(ROOT, "target/release/libpymalloc_preload.so"),
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}
PROGRAMS = {
    "python alloc_heavy.py": (["python3", "preload/programs/alloc_heavy.py"], None),
    "sqlite3 workload.sql": (["sqlite3", ":memory:"], "preload/programs/workload.sql"),
    "python -m test (dict, list, json)": (
        ["python3", "-m", "test", "-q", "test_dict", "test_list", "test_json"], None),
}


def run(cmd, stdin, lib):
    env = dict(os.environ, PYTHONMALLOC="malloc")
    if lib:
        env["LD_PRELOAD"] = lib
    start = time.perf_counter()
    with open(os.path.join(ROOT, stdin)) if stdin else open(os.devnull) as inp:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=inp,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss * 1024, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    libs = {k: v for k, v in LIBS.items() if v is None or os.path.exists(v)}
    missing = set(LIBS) - set(libs)
    if missing:
        print(f"missing (install them for a full table): {sorted(missing)}", file=sys.stderr)
    times, rss = {}, {}
    order = [(p, l) for p in PROGRAMS for l in libs]
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for prog, lib in order:
            cmd, stdin = PROGRAMS[prog]
            wall, peak, status = run(cmd, stdin, libs[lib])
            times.setdefault(prog, {}).setdefault(lib, []).append(wall)
            rss.setdefault(prog, {}).setdefault(lib, []).append(peak)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    peers = [l for l in libs if l != "pymalloc"]
    head = "| program | " + " | ".join(libs) + " | " + " | ".join(f"vs {p}" for p in peers) + " |"
    lines = [f"{args.rounds} interleaved rounds, medians; wall time, then peak RSS. "
             "Ratio < 1: pymalloc is faster / smaller.", "", head,
             "|---|" + "---:|" * (len(libs) + len(peers))]
    for prog in PROGRAMS:
        t = {l: statistics.median(v) for l, v in times[prog].items()}
        m = {l: statistics.median(v) for l, v in rss[prog].items()}
        cells = " | ".join(f"{t[l] * 1e3:.0f} ms" for l in libs)
        ratios = " | ".join(f"{t['pymalloc'] / t[p]:.2f}" for p in peers)
        lines.append(f"| {prog} (time) | {cells} | {ratios} |")
        cells = " | ".join(f"{m[l] / 2**20:.1f} MiB" for l in libs)
        ratios = " | ".join(f"{m['pymalloc'] / m[p]:.2f}" for p in peers)
        lines.append(f"| {prog} (peak RSS) | {cells} | {ratios} |")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(ROOT, "preload", "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
