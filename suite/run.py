#!/usr/bin/env python3
"""The whole benchmark suite in one command. Runs the workloads for every
allocator in interleaved rounds and prints median times and ratios
(pymalloc vs mimalloc, the fastest peer and System), one fresh process per
workload, allocator and round, so each allocator is the real global
allocator of its process and no workload inherits another's heap; then the
memory report (1 GiB workload, per-workload peak RSS) and the criterion
micro-benchmarks. Writes suite/results.md and suite/results.json; `--chart`
also draws suite/ratios.png (matplotlib).

`--secure` measures the security modes instead: pymalloc against
pymalloc-hardened (feature `hardened`), mimalloc against mimalloc-secure
(`secure`), snmalloc against snmalloc-check (`check`), the workloads only,
the six interleaved as above; the hardened variants come from the workloads
built a second time with the suite's `secure` feature ($TARGET/secure).
Writes suite/security.md: per workload, each pair's median time ratio.

    python3 suite/run.py --chart         # everything, 4 rounds (~8 min; pip install matplotlib)
    python3 suite/run.py --chart-only    # redraw ratios.png from results.json
    python3 suite/run.py --quick         # 2 rounds, workloads only
    python3 suite/run.py --filter larson # some workloads only
    python3 suite/run.py --rounds 1 --filter pair_16 --no-memory --no-micro --no-save
                                         # a smoke run (CI), a few seconds once built
    python3 suite/run.py --secure        # security modes' cost, 4 rounds

Honours CARGO_TARGET_DIR.
"""
import argparse, json, os, platform, random, re, shlex, statistics, subprocess, sys

SUITE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SUITE)
TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
PEERS = ["system", "mimalloc", "mimalloc-v2", "jemalloc", "snmalloc", "rpmalloc"]
ALLOCATORS = ["pymalloc"] + PEERS
# --secure's hardened variants, each going by its plain allocator's name in
# the binary built with the suite's `secure` feature.
SECURE = {"pymalloc-hardened": "pymalloc", "mimalloc-secure": "mimalloc", "snmalloc-check": "snmalloc"}
SINGLE_THREAD = ["churn", "binary_trees", "vec_string_growth", "vec_growth_8x", "btree_churn"]


def workloads_binary(*cargo_args, env=None):
    """Builds the `workloads` bench binary and returns its path."""
    proc = subprocess.run(["cargo", "bench", "-p", "pymalloc-suite", "--bench", "workloads", "--no-run",
                           *cargo_args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr)  # the compiler's errors, which capture_output would hide
    return os.path.join(ROOT, re.search(r"Executable .*\((.*workloads-[0-9a-f]+)\)", proc.stderr).group(1))


def build():
    main = workloads_binary()
    v2_target = os.path.join(TARGET, "mimalloc-v2")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    "suite/mimalloc-v2/Cargo.toml", "--target-dir", v2_target],
                   cwd=ROOT, check=True)
    v2 = os.path.join(v2_target, "release", "pymalloc-bench-mimalloc-v2")
    return {a: v2 if a == "mimalloc-v2" else main for a in ALLOCATORS}


def build_secure():
    main = workloads_binary()
    # Its own target dir, so that neither build's features invalidate the
    # other's artifacts. snmalloc-sys built by `cc` (build_cc) ignores its
    # `check` feature beyond the archive's name: the define turns the checks
    # on. An environment's CXXFLAGS replaces .cargo/config.toml's -DNDEBUG,
    # hence the default.
    env = dict(os.environ, CXXFLAGS=os.environ.get("CXXFLAGS", "-DNDEBUG") + " -DSNMALLOC_CHECK_CLIENT")
    secure = workloads_binary("--features", "secure", "--target-dir", os.path.join(TARGET, "secure"), env=env)
    return {**{a: main for a in SECURE.values()}, **{a: secure for a in SECURE}}


def run(binary, alloc, *args):
    env = dict(os.environ, PYMALLOC_BENCH_ALLOC=alloc)
    out = subprocess.run([binary, *args], env=env, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def machine():
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def time_rounds(bins, workloads, rounds):
    """Each workload's times per allocator of `bins`, over interleaved rounds."""
    times = {}
    order = list(bins)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for w in workloads:
            for alloc in order:
                (_, _, workload, secs, _), = run(bins[alloc], SECURE.get(alloc, alloc), "time", "=" + w)
                times.setdefault(workload, {}).setdefault(alloc, []).append(float(secs))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--filter", default="")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--chart", action="store_true")
    ap.add_argument("--no-save", action="store_true",
                    help="print the tables only; leave results.md/json as they are")
    ap.add_argument("--chart-only", action="store_true",
                    help="redraw suite/ratios.png from suite/results.json (matplotlib)")
    ap.add_argument("--secure", action="store_true",
                    help="the security modes against the defaults (workloads only); writes suite/security.md")
    args = ap.parse_args()
    if args.chart_only:
        with open(os.path.join(SUITE, "results.json")) as f:
            chart(json.load(f)["rows"])
        return
    rounds = 2 if args.quick else args.rounds
    bins = build_secure() if args.secure else build()
    # The workloads whose names contain --filter, then each one run alone
    # (`time =NAME`) in a fresh process per allocator: a workload measured
    # after others in the same process would measure their leftovers too.
    workloads = [w for (w,) in run(bins["pymalloc"], "pymalloc", "list", args.filter)]
    if not workloads:
        sys.exit(f"no workload matches --filter {args.filter!r}")
    times = time_rounds(bins, workloads, rounds)
    if args.secure:
        return security(times, rounds, args.no_save)
    memory = {}
    if not (args.quick or args.no_memory):
        for alloc in ALLOCATORS:
            (_, name, *values), = run(bins[alloc], alloc, "memory")
            keys = ["base", "live", "peak", "kept", "after_90", "after_90_trim", "after_all"]
            memory[name] = dict(zip(keys, map(int, values)))

    peaks = {}
    if not (args.quick or args.no_memory):
        for w in SINGLE_THREAD:
            for alloc in ALLOCATORS:
                (_, name, _, peak), = run(bins[alloc], alloc, "peak", w)
                peaks.setdefault(w, {})[name] = int(peak)
    micro = None
    if not (args.quick or args.no_micro):
        subprocess.run(["cargo", "bench", "-p", "pymalloc-suite", "--bench", "micro"], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        micro = subprocess.run([sys.executable, os.path.join(SUITE, "criterion_table.py")],
                               capture_output=True, text=True, check=True).stdout.strip()

    med = {w: {a: statistics.median(v) for a, v in per.items()} for w, per in times.items()}
    lines = [f"Machine: {machine()}; {rounds} interleaved rounds, medians. "
             "Ratio < 1: pymalloc is faster.", "",
             "| workload | pymalloc | fastest peer | vs mimalloc | vs mimalloc-v2 | vs fastest | vs System |",
             "|---|---:|---|---:|---:|---:|---:|"]
    rows = []
    for w, m in med.items():
        py = m["pymalloc"]
        fastest = min(PEERS, key=lambda a: m[a])
        row = dict(workload=w, pymalloc=py, fastest=fastest, times=m,
                   vs_mimalloc=py / m["mimalloc"], vs_mimalloc_v2=py / m["mimalloc-v2"],
                   vs_fastest=py / m[fastest], vs_system=py / m["system"])
        rows.append(row)
        lines.append(f"| {w} | {py * 1e3:.1f} ms | {fastest} ({m[fastest] * 1e3:.1f} ms) | "
                     f"{row['vs_mimalloc']:.2f} | {row['vs_mimalloc_v2']:.2f} | {row['vs_fastest']:.2f} | "
                     f"{row['vs_system']:.2f} |")
    if memory:
        lines += ["", "Memory: 1 GiB of 16–256 B objects (plus a 24-byte `Vec` header each, "
                  "counted as overhead), then a random 90% freed, then the rest. "
                  "`trim()` exists for pymalloc only.", "",
                  "| allocator | peak RSS | overhead per live byte | RSS after freeing 90% "
                  "| … then trim() | RSS 1 s after freeing all |",
                  "|---|---:|---:|---:|---:|---:|"]
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        for a in ALLOCATORS:
            m = memory[a]
            over = (m["peak"] - m["base"] - m["live"]) / m["live"]
            trimmed = mib(m["after_90_trim"]) if a == "pymalloc" else "–"
            lines.append(f"| {a} | {mib(m['peak'])} | {over:.3f} | {mib(m['after_90'])} | {trimmed} "
                         f"| {mib(m['after_all'])} |")
    if peaks:
        lines += ["", "Peak RSS of each single-thread workload, run alone in its own process:", "",
                  "| workload | " + " | ".join(ALLOCATORS) + " | pymalloc / System |",
                  "|---|" + "---:|" * (len(ALLOCATORS) + 1)]
        for w, per in peaks.items():
            cells = " | ".join(f"{per[a] / 2**20:.1f} MiB" for a in ALLOCATORS)
            lines.append(f"| {w} | {cells} | {per['pymalloc'] / per['system']:.2f} |")
    if micro:
        lines += ["", "Micro-benchmarks (criterion, all but mimalloc-v2 in one process):", "", micro]
    text = "\n".join(lines)
    print(text)
    if args.no_save:
        return
    with open(os.path.join(SUITE, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(SUITE, "results.json"), "w") as f:
        json.dump(dict(rows=rows, memory=memory, peaks=peaks, raw=times), f, indent=1)
    if args.chart:
        chart(rows)


def security(times, rounds, no_save):
    """Each security mode's median time over its default's, per workload."""
    pairs = [(plain, hardened) for hardened, plain in SECURE.items()]
    ratios = {w: [statistics.median(t[h]) / statistics.median(t[p]) for p, h in pairs] for w, t in times.items()}
    per_workload = list(ratios.values())
    ratios["**geomean**"] = [statistics.geometric_mean(col) for col in zip(*per_workload)]
    # false_sharing measures where four blocks land (a security mode that
    # scatters them wins by accident), not what the mode costs.
    costs = [r for w, r in zip(times, per_workload) if not w.startswith("false_sharing")]
    if costs and len(costs) < len(per_workload):
        ratios["**geomean without false_sharing**"] = [statistics.geometric_mean(col) for col in zip(*costs)]
    # The hardened code changes over time: say which commit was measured, and
    # whether the measured code (not the results files, often rewritten)
    # differed from it.
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    commit = git("rev-parse", "--short", "HEAD").stdout.strip()
    code = ["src", "Cargo.toml", "suite/Cargo.toml", "suite/benches", "suite/src"]
    if git("diff", "--quiet", "HEAD", "--", *code).returncode:
        commit += " plus uncommitted changes"
    command = shlex.join(["python3", "suite/run.py", *sys.argv[1:]])
    lines = [f"`{command}` at commit {commit}. Machine: {machine()}; {rounds} interleaved rounds, "
             "each allocator in a fresh process per workload. Median time of the security mode over "
             "the default build's: > 1, the security mode is slower.", "",
             "| workload | " + " | ".join(f"{h} / {p}" for p, h in pairs) + " |",
             "|---|" + "---:|" * len(pairs)]
    lines += [f"| {w} | " + " | ".join(f"{x:.2f}" for x in r) + " |" for w, r in ratios.items()]
    text = "\n".join(lines)
    print(text)
    if not no_save:
        with open(os.path.join(SUITE, "security.md"), "w") as f:
            f.write(text + "\n")


def chart(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["workload"] for r in rows]
    series = [("vs fastest peer", "vs_fastest"), ("vs mimalloc (v3)", "vs_mimalloc"), ("vs System", "vs_system")]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.27
    for i, (label, key) in enumerate(series):
        ax.bar([x + (i - 1) * width for x in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel("pymalloc time / peer time (lower is better)")
    ax.set_title("pymalloc vs peers, median of interleaved runs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(SUITE, "ratios.png"), dpi=90)


if __name__ == "__main__":
    main()
