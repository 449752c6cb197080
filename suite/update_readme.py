#!/usr/bin/env python3
"""Copies the measured tables into the top-level README.md, so that no
figure there is hand-edited: run it after the commands that write them
(see suite/README.md).

  suite/results.md        <- python3 suite/run.py --chart
  suite/instructions.txt  <- suite/instructions.sh --secure --trace 32 > suite/instructions.txt
  suite/security.md       <- python3 suite/run.py --secure
  preload/results.md      <- python3 preload/bench.py --rounds 9

Each block of README.md is found by the first line of what replaces it
(the "Machine:"/"5 interleaved rounds" caption, the table's header row, the
instruction table's header) and ends at the first blank line after a table
or at the closing fence of the text block. Prose around the tables is not
touched: read it again after a run.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def table_end(lines, i):
    """Index past the last table row at or after line i."""
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    return i


def replace(lines, start_prefix, new, end):
    """Replaces the block that starts with the first line beginning with
    `start_prefix` and ends where `end(lines, start)` says."""
    for i, line in enumerate(lines):
        if line.startswith(start_prefix):
            j = end(lines, i)
            return lines[:i] + new + lines[j:]
    sys.exit(f"update_readme.py: no line starting {start_prefix!r} in README.md")


def results_end(lines, i):
    # The caption, the workload table, then the memory and micro tables with
    # their captions: everything up to the chart.
    while not lines[i].startswith("![pymalloc's time"):
        i += 1
    while lines[i - 1] == "":
        i -= 1
    return i


def fence_end(lines, i):
    # i is the header row inside a ```text block: up to the fence.
    while not lines[i].startswith("```"):
        i += 1
    return i


def main():
    readme = ROOT / "README.md"
    lines = readme.read_text().split("\n")
    results = (ROOT / "suite/results.md").read_text().rstrip("\n").split("\n")
    lines = replace(lines, "Machine: ", results, results_end)
    preload = (ROOT / "preload/results.md").read_text().rstrip("\n").split("\n")
    lines = replace(lines, preload[0][:30], preload, lambda l, i: table_end(l, i))
    security = (ROOT / "suite/security.md").read_text().split("\n")
    table = [l for l in security if l.startswith("|")]
    lines = replace(lines, table[0], table, lambda l, i: table_end(l, i))
    instructions = (ROOT / "suite/instructions.txt").read_text().rstrip("\n").split("\n")
    lines = replace(lines, "allocator             total", instructions, fence_end)
    readme.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
