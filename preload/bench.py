#!/usr/bin/env python3
"""Real programs under LD_PRELOAD: glibc (no preload), pymalloc
(libpymalloc_preload.so), Debian's mimalloc and jemalloc, run in
interleaved shuffled rounds; median wall time and peak RSS per program,
and pymalloc's ratios (< 1: pymalloc faster / smaller).

    apt-get install -y libmimalloc2.0 libjemalloc2
    cargo build --release -p pymalloc-preload
    python3 preload/bench.py [--rounds 5] [--only NAME-SUBSTRING ...]

PYMALLOC_PRELOAD_LIB overrides the path of the pymalloc library (default
target/release/libpymalloc_preload.so). --only (repeatable) runs the
programs whose name contains one of the substrings; results.md is then
left alone and the table only printed.

Besides python3 and sqlite3 there are three small C allocator benchmarks
(preload/programs/*.c, compiled here with gcc -O2 -pthread into
$CARGO_TARGET_DIR/programs, default target/programs), each deterministic,
printing a checksum: glibc_simple (one thread, 16-256 B malloc+free in
batches of 25-1600 and as pairs, like glibc's bench-malloc-simple), larson
(2 threads replacing random blocks of 16-512 B in slot arrays of 4096 that
change hands every 4096 steps, so 46% of frees are cross-thread, like the
Larson server benchmark) and sh6bench (2 threads allocating batches of
3000 blocks of 8 B - 4 KiB and freeing them LIFO, FIFO and in random
order, like MicroQuill's sh6bench). Each program runs under a small
launcher that measures its peak RSS (see LAUNCHER).
"""
import argparse, os, random, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = {
    "glibc": None,
    "pymalloc": os.environ.get("PYMALLOC_PRELOAD_LIB")
    or os.path.join(ROOT, "target/release/libpymalloc_preload.so"),
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "programs")
C_SOURCES = {  # program name -> its C source, built by build()
    "glibc_simple (C)": "preload/programs/glibc_simple.c",
    "larson 2 threads (C)": "preload/programs/larson.c",
    "sh6bench 2 threads (C)": "preload/programs/sh6bench.c",
}
PROGRAMS = {
    "python alloc_heavy.py": (["python3", "preload/programs/alloc_heavy.py"], None),
    "sqlite3 workload.sql": (["sqlite3", ":memory:"], "preload/programs/workload.sql"),
    "python -m test (dict, list, json)": (
        ["python3", "-m", "test", "-q", "test_dict", "test_list", "test_json"], None),
    "glibc_simple (C)": ([os.path.join(BIN, "glibc_simple")], None),
    "larson 2 threads (C)": ([os.path.join(BIN, "larson"), "2"], None),
    "sh6bench 2 threads (C)": ([os.path.join(BIN, "sh6bench"), "2"], None),
}


def build(prog):
    """Compiles a C program of PROGRAMS (if it is one) into BIN."""
    src = C_SOURCES.get(prog)
    if src is None:
        return
    os.makedirs(BIN, exist_ok=True)
    out = PROGRAMS[prog][0][0]
    subprocess.run(["gcc", "-O2", "-pthread", "-Wall", "-Wextra", "-o", out,
                    os.path.join(ROOT, src)], check=True)


# A child's ru_maxrss counts the address space it was forked from: exec
# keeps the old one's high-water mark, so a program spawned from Python
# directly reports at least this script's RSS (~15 MiB), more than the C
# benchmarks use. Programs run under this small launcher instead, which
# forks them from its own ~1 MiB (not preloaded: LD_PRELOAD is set in the
# child only), sends their output to /dev/null and prints their peak RSS.
LAUNCHER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) { /* maxrss PRELOAD-OR-EMPTY CMD ARGS... */
    if (argc < 3) return 125;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null < 0 || dup2(null, 1) < 0) _exit(126);
        if (argv[1][0]) setenv("LD_PRELOAD", argv[1], 1);
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) return 126;
    printf("%ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""


def build_launcher():
    os.makedirs(BIN, exist_ok=True)
    src = os.path.join(BIN, "maxrss.c")
    with open(src, "w") as f:
        f.write(LAUNCHER)
    out = os.path.join(BIN, "maxrss")
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", out, src], check=True)
    return out


def run(cmd, stdin, lib, launcher):
    env = dict(os.environ, PYTHONMALLOC="malloc")
    env.pop("LD_PRELOAD", None)
    start = time.perf_counter()
    with open(os.path.join(ROOT, stdin)) if stdin else open(os.devnull) as inp:
        p = subprocess.run([launcher, lib or ""] + cmd, cwd=ROOT, env=env, stdin=inp,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wall = time.perf_counter() - start
    return wall, int(p.stdout or 0) * 1024, p.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", action="append", metavar="NAME-SUBSTRING",
                    help="run only programs whose name contains this (repeatable)")
    args = ap.parse_args()
    progs = [p for p in PROGRAMS if not args.only or any(o in p for o in args.only)]
    if not progs:
        sys.exit(f"--only matches none of: {list(PROGRAMS)}")
    for prog in progs:
        build(prog)
    launcher = build_launcher()
    libs = {k: v for k, v in LIBS.items() if v is None or os.path.exists(v)}
    missing = set(LIBS) - set(libs)
    if "pymalloc" in missing:
        sys.exit(f"{LIBS['pymalloc']} missing: cargo build --release -p pymalloc-preload "
                 "(or set PYMALLOC_PRELOAD_LIB)")
    if missing:
        print(f"missing (install them for a full table): {sorted(missing)}", file=sys.stderr)
    times, rss, statuses = {}, {}, {}
    order = [(p, l) for p in progs for l in libs]
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for prog, lib in order:
            cmd, stdin = PROGRAMS[prog]
            wall, peak, status = run(cmd, stdin, libs[lib], launcher)
            times.setdefault(prog, {}).setdefault(lib, []).append(wall)
            rss.setdefault(prog, {}).setdefault(lib, []).append(peak)
            statuses.setdefault(prog, {}).setdefault(lib, set()).add(status)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for prog in progs:  # e.g. a crash under one allocator only
        if any(s != statuses[prog]["glibc"] for s in statuses[prog].values()):
            print(f"warning: {prog}: exit statuses differ: {statuses[prog]}", file=sys.stderr)
    peers = [l for l in libs if l != "pymalloc"]
    head = "| program | " + " | ".join(libs) + " | " + " | ".join(f"vs {p}" for p in peers) + " |"
    lines = [f"{args.rounds} interleaved rounds, medians; wall time, then peak RSS. "
             "Ratio < 1: pymalloc is faster / smaller.", "", head,
             "|---|" + "---:|" * (len(libs) + len(peers))]
    for prog in progs:
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
    if args.only:
        return
    with open(os.path.join(ROOT, "preload", "results.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
