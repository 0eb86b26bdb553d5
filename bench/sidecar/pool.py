#!/usr/bin/env python3
"""Pools the rounds of several sidecar benchmark reports (docs/benchmarks.md, "Sidecar").

One run's medians move with the machine; the rounds of several runs of the same build,
pooled, say more. Reads the per-round table of each `target/bench/sidecar-*.md` given and
prints, over all rounds: the median added p50 and p99 of each pair (path − direct of the
same round), the median per-round ratio Strait / haproxy of the added p99, how many rounds
Strait's p99 was at or below haproxy's, and the median CPU seconds per 1,000 requests.

    bench/sidecar/pool.py target/bench/sidecar-A.md target/bench/sidecar-B.md ...
"""
import re
import statistics
import sys

ROW = re.compile(r"\| (\d+) \| (direct|strait|haproxy) \|(.*)")


def rounds(path):
    """{round: {path: (p50, p99, pair CPU or None)}} from one report's per-round table."""
    out = {}
    with open(path) as f:
        for line in f:
            m = ROW.match(line)
            if not m:
                continue
            cells = [c.strip() for c in m.group(3).split("|")]
            # 200s | other | errors | rps | p50 | p99 | p99.9 | max | pair CPU | ...
            cpu = None if cells[8] == "–" else float(cells[8])
            out.setdefault(m.group(1), {})[m.group(2)] = (float(cells[4]), float(cells[5]), cpu)
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    added = {"strait": ([], []), "haproxy": ([], [])}
    cpu = {"strait": [], "haproxy": []}
    ratios, wins = [], 0
    for report in sys.argv[1:]:
        for r in rounds(report).values():
            if not all(p in r for p in ("direct", "strait", "haproxy")):
                continue
            for pair in added:
                added[pair][0].append(r[pair][0] - r["direct"][0])
                added[pair][1].append(r[pair][1] - r["direct"][1])
                cpu[pair].append(r[pair][2])
            h = r["haproxy"][1] - r["direct"][1]
            if h > 0:
                ratios.append((r["strait"][1] - r["direct"][1]) / h)
            wins += r["strait"][1] <= r["haproxy"][1]
    n = len(cpu["strait"])
    if n == 0:
        sys.exit("no complete rounds in the reports given")
    print(f"{n} rounds from {len(sys.argv) - 1} reports")
    for pair, (p50, p99) in added.items():
        print(
            f"{pair}: added p50 {statistics.median(p50):.3f} ms, added p99 {statistics.median(p99):.3f} ms, "
            f"CPU {statistics.median(cpu[pair]):.4f} s per 1,000 requests"
        )
    print(f"added p99 Strait / haproxy, median per round: {statistics.median(ratios):.2f}")
    print(f"Strait's p99 at or below haproxy's in {wins} of {n} rounds")


if __name__ == "__main__":
    main()
