#!/usr/bin/env python3
"""Measuring and reporting for the east-west gateway benchmark (bench/gateway-run.sh).

Standard library only. Subcommands:

  pids     The pids of a `strait up` federation's gateways of zones a and b, from its
           processes.json, as gateway-a=PID,gateway-b=PID.
  sample   Runs one load command (oha or `strait-bench-gateway blast-client`), its stdout to a
           file, with CPU time (/proc/PID/stat utime+stime) of the given processes before and
           after and the busy time of the whole machine (/proc/stat); appends one JSON record.
  report   Markdown tables of docs/benchmarks.md ("East-west gateway") from the records and
           the time-to-first-byte samples.

The script owns the processes; this file only reads /proc and files.
"""

import argparse
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from benchlib import CpuWindow, drop_separator, fmt, med, oha_summary, parse_procs, span  # noqa: E402

PATHS = ["direct", "strait", "haproxy"]
PATH_NAMES = {
    "direct": "direct (client → app)",
    "strait": "Strait: sidecar → gateway a → QUIC → gateway b → sidecar",
    "haproxy": "haproxy chain: 4 haproxy, 3 TLS legs",
}


def cmd_pids(args):
    procs = json.load(open(args.processes))
    out = {}
    for p in procs:
        kind, zone = p.get("kind", ""), p.get("zone")
        if kind == "gateway" and zone in ("a", "b") and f"gateway-{zone}" not in out:
            out[f"gateway-{zone}"] = p["pid"]
    missing = {"gateway-a", "gateway-b"} - out.keys()
    if missing:
        sys.exit(f"not in {args.processes}: {sorted(missing)}")
    print(",".join(f"{k}={v}" for k, v in sorted(out.items())))


def cmd_sample(args):
    procs = parse_procs(args.procs)
    with CpuWindow(procs) as window, open(args.out, "w") as out:
        status = subprocess.call(args.command, stdout=out)
    record = {
        "kind": args.kind,
        "round": args.round,
        "path": args.path,
        "phase": args.phase,
        "out": args.out,
        "exit": status,
        "elapsed_s": window.elapsed_s,
        "cpu_s": window.cpu_s,
        "machine_cores_busy": window.machine_cores_busy,
    }
    with open(args.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    if status != 0:
        sys.exit(f"load command exited with {status}")


# === report ===


def ratio_row(label, by, rounds, value, num, den, digits=2):
    ratios = []
    for k in rounds:
        if (k, num) in by and (k, den) in by:
            a, b = value(by[(k, num)], k), value(by[(k, den)], k)
            if a is not None and b:
                ratios.append(a / b)
    return f"| {label} | {fmt(med(ratios), digits)} ({span(ratios, digits)}) |"


def bulk_tables(records, out):
    rs = [r for r in records if r["kind"] == "bulk" and r["phase"] == "measure"]
    if not rs:
        return
    for r in rs:
        r["load"] = json.loads(open(r["out"]).read().strip().splitlines()[-1])
        gb = r["load"]["bytes"] / 1e9
        r["proxy_cpu_s"] = sum(r["cpu_s"][n] for n in r["proxies"]) if r["proxies"] else 0.0
        r["cpu_per_gb"] = r["proxy_cpu_s"] / gb if r["proxies"] else None
        r["app_cpu_per_gb"] = r["cpu_s"].get("blast-server", 0) / gb
    rounds = sorted({r["round"] for r in rs})
    by = {(r["round"], r["path"]): r for r in rs}
    out.append("Bulk, one TCP stream (every step):")
    out.append("")
    out.append("| round | path | GB read | seconds | Gbit/s | proxies' CPU s | proxies' CPU s per GB | app CPU s per GB | machine cores busy |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rs:
        out.append(
            f"| {r['round']} | {r['path']} | {r['load']['bytes'] / 1e9:.2f} | {r['load']['seconds']:.1f} | {r['load']['gbit_s']:.2f} | "
            f"{fmt(r['proxy_cpu_s'] if r['proxies'] else None, 2)} | {fmt(r['cpu_per_gb'])} | {fmt(r['app_cpu_per_gb'])} | {r['machine_cores_busy']:.2f} |"
        )
    out.append("")
    out.append(f"Bulk, median over {len(rounds)} rounds (range in brackets); CPU per GB is the sum over every proxy on the path:")
    out.append("")
    out.append("| path | Gbit/s | CPU s per GB (all proxies) | per proxy, CPU s per GB |")
    out.append("|---|---:|---:|---|")
    for path in PATHS:
        prs = [by[(k, path)] for k in rounds if (k, path) in by]
        g = [r["load"]["gbit_s"] for r in prs]
        c = [r["cpu_per_gb"] for r in prs]
        per = "–"
        if prs and prs[0]["proxies"]:
            per = ", ".join(
                f"{n} {fmt(med([r['cpu_s'][n] / (r['load']['bytes'] / 1e9) for r in prs]))}" for n in prs[0]["proxies"]
            )
        out.append(f"| {PATH_NAMES[path]} | {fmt(med(g), 2)} ({span(g, 2)}) | {fmt(med(c))} ({span(c)}) | {per} |")
    out.append("")
    out.append("| ratio (per round, median and range) | value |")
    out.append("|---|---:|")
    gbit = lambda r, k: r["load"]["gbit_s"]
    cpu = lambda r, k: r["cpu_per_gb"]
    out.append(ratio_row("throughput Strait / haproxy", by, rounds, gbit, "strait", "haproxy"))
    out.append(ratio_row("throughput Strait / direct", by, rounds, gbit, "strait", "direct", 3))
    out.append(ratio_row("throughput haproxy / direct", by, rounds, gbit, "haproxy", "direct", 3))
    out.append(ratio_row("CPU per GB Strait / haproxy", by, rounds, cpu, "strait", "haproxy"))
    out.append("")


def latency_tables(records, out):
    rs = [r for r in records if r["kind"] == "latency" and r["phase"] == "measure"]
    if not rs:
        return
    for r in rs:
        r["load"] = oha_summary(r["out"])
    rounds = sorted({r["round"] for r in rs})
    by = {(r["round"], r["path"]): r for r in rs}

    def cpu_per_k(r):
        if not r["proxies"]:
            return None
        n = max(r["load"]["ok"] + r["load"]["non200"], 1)
        return sum(r["cpu_s"][p] for p in r["proxies"]) / n * 1000

    out.append("Latency at a fixed rate, 1 KB answers (every step; oha `--latency-correction`):")
    out.append("")
    out.append("| round | path | 200s | other | errors | achieved rps | p50 ms | p99 ms | p99.9 ms | proxies' CPU s per 1,000 req | machine cores busy |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rs:
        l = r["load"]
        out.append(
            f"| {r['round']} | {r['path']} | {l['ok']} | {l['non200']} | {l['errors']} | {fmt(l['rps'], 0)} | {fmt(l['p50'])} | "
            f"{fmt(l['p99'])} | {fmt(l['p999'])} | {fmt(cpu_per_k(r))} | {r['machine_cores_busy']:.2f} |"
        )
    out.append("")
    out.append(f"Latency, median over {len(rounds)} rounds (range in brackets); added = path − direct of the same round:")
    out.append("")
    out.append("| path | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU s per 1,000 req (all proxies) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for path in PATHS:
        prs = [by[(k, path)] for k in rounds if (k, path) in by]
        row = [PATH_NAMES[path]]
        for q in ["p50", "p99"]:
            v = [r["load"][q] for r in prs]
            row.append(f"{fmt(med(v))} ({span(v)})")
        for q in ["p50", "p99"]:
            v = [by[(k, path)]["load"][q] - by[(k, "direct")]["load"][q] for k in rounds if (k, path) in by and (k, "direct") in by]
            row.append("–" if path == "direct" else f"{fmt(med(v))} ({span(v)})")
        c = [cpu_per_k(r) for r in prs]
        row.append("–" if path == "direct" else f"{fmt(med(c))} ({span(c)})")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("| ratio (per round, median and range) | value |")
    out.append("|---|---:|")
    for q in ["p50", "p99"]:
        total = lambda r, k, q=q: r["load"][q]
        added = lambda r, k, q=q: r["load"][q] - by[(k, "direct")]["load"][q]
        out.append(ratio_row(f"{q} Strait / haproxy", by, rounds, total, "strait", "haproxy"))
        out.append(ratio_row(f"added {q} Strait / haproxy", by, rounds, added, "strait", "haproxy"))
    out.append(ratio_row("CPU per request Strait / haproxy", by, rounds, lambda r, k: cpu_per_k(r), "strait", "haproxy"))
    out.append("")


def pct(values, p):
    v = sorted(values)
    rank = max(1, min(len(v), math.ceil(p / 100 * len(v))))
    return v[rank - 1]


def ttfb_tables(path, out):
    data = json.load(open(path))
    names = {
        "quic-pooled": "new tunnel on the pooled QUIC connection (Strait)",
        "tcp-tls-direct": "fresh TCP + TLS 1.3 straight to the destination (no gateway)",
        "tcp-tls-gateway": "fresh TCP + TLS 1.3 to a gateway per connection, then end-to-end mTLS inside",
    }
    out.append("Time to first byte of a new cross-zone connection, 20 ms RTT (ms; every sample counts from the first byte the client sends):")
    out.append("")
    out.append("| way | samples | first byte p50 | p99 | min | max | tunnel open / TCP connected p50 | gateway TLS done p50 | end-to-end mTLS done p50 | first byte p50 / direct |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    direct = pct([s["first_byte"] for s in data["tcp-tls-direct"]], 50)
    for way, samples in data.items():
        fb = [s["first_byte"] for s in samples]
        hop = [s["hop_tls"] for s in samples if s["hop_tls"] is not None]
        out.append(
            f"| {names.get(way, way)} | {len(fb)} | {pct(fb, 50):.1f} | {pct(fb, 99):.1f} | {min(fb):.1f} | {max(fb):.1f} | "
            f"{pct([s['open'] for s in samples], 50):.1f} | {fmt(pct(hop, 50) if hop else None, 1)} | {pct([s['tls'] for s in samples], 50):.1f} | {pct(fb, 50) / direct:.2f} |"
        )
    out.append("")


def cmd_report(args):
    records = [json.loads(line) for line in open(args.records)] if args.records and os.path.exists(args.records) else []
    proxies = {
        "direct": [],
        "strait": ["client-a-sidecar", "gateway-a", "gateway-b", "dest-sidecar"],
        "haproxy": ["haproxy-1", "haproxy-2", "haproxy-3", "haproxy-4"],
    }
    for r in records:
        r["proxies"] = [p if p != "dest-sidecar" else ("bulk-sidecar" if r["kind"] == "bulk" else "web-sidecar") for p in proxies[r["path"]]]
    out = []
    bulk_tables(records, out)
    latency_tables(records, out)
    if args.ttfb and os.path.exists(args.ttfb):
        ttfb_tables(args.ttfb, out)
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pids")
    p.add_argument("--processes", required=True)
    p.set_defaults(func=cmd_pids)
    s = sub.add_parser("sample")
    s.add_argument("--procs", required=True)
    s.add_argument("--record", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--kind", required=True, choices=["bulk", "latency"])
    s.add_argument("--round", type=int, default=0)
    s.add_argument("--path", required=True)
    s.add_argument("--phase", default="measure", choices=["measure", "warmup"])
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sample)
    r = sub.add_parser("report")
    r.add_argument("--records")
    r.add_argument("--ttfb")
    r.set_defaults(func=cmd_report)
    args = drop_separator(parser.parse_args())
    args.func(args)


if __name__ == "__main__":
    main()
