#!/usr/bin/env python3
"""Measuring and reporting for the sidecar data-plane benchmark (bench/sidecar-run.sh).

Two subcommands, standard library only:

  sample   Runs a load command (oha) while sampling the given processes: CPU time
           (/proc/PID/stat utime+stime) before and after, VmRSS (/proc/PID/status) every
           0.25 s, and the whole machine's busy time (/proc/stat). Writes one JSON record.
  report   Reads those records and oha's JSON outputs and prints the markdown tables of
           docs/benchmarks.md ("Sidecar: added latency, memory, CPU").

The script owns the processes; this file only reads /proc and files.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from benchlib import CpuWindow, drop_separator, fmt, med, oha_summary, parse_procs, span  # noqa: E402

PATHS = ["direct", "strait", "haproxy"]
PATH_NAMES = {
    "direct": "direct (oha → nginx)",
    "strait": "Strait sidecar pair (mTLS, h2 between)",
    "haproxy": "haproxy pair (mTLS, h2 between)",
}


# === /proc reader ===


def memory_kib(pid):
    """VmRSS and its two parts that matter here, RssAnon (heap, stacks, relocated data) and
    RssFile (pages of the executable and libraries), in KiB, from /proc/PID/status."""
    values = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values


# === sample ===


def cmd_sample(args):
    procs = parse_procs(args.procs)
    record = {"round": args.round, "path": args.path, "oha": args.oha_json, "phase": args.phase}
    samples = {name: [] for name in procs}
    stop = threading.Event()

    def sampler():
        while not stop.wait(0.25):
            for name, pid in procs.items():
                try:
                    samples[name].append(memory_kib(pid))
                except OSError:
                    pass

    with CpuWindow(procs) as window:
        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        with open(args.oha_json, "w") as out:
            status = subprocess.call(args.command, stdout=out)
        stop.set()
        thread.join()
    record["elapsed_s"] = window.elapsed_s
    record["exit"] = status
    record["cpu_s"] = window.cpu_s

    def summary(s):
        rss = [m["VmRSS"] for m in s]
        # Anon and file parts of the sample with the highest VmRSS.
        top = max(s, key=lambda m: m["VmRSS"]) if s else {"RssAnon": 0, "RssFile": 0}
        return {
            "max": max(rss) if rss else 0,
            "mean": statistics.fmean(rss) if rss else 0,
            "n": len(rss),
            "anon_at_max": top["RssAnon"],
            "file_at_max": top["RssFile"],
        }

    record["rss_kib"] = {name: summary(s) for name, s in samples.items()}
    record["machine_cores_busy"] = window.machine_cores_busy
    with open(args.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    if status != 0:
        sys.exit(f"load command exited with {status}")


def cmd_rss(args):
    """Prints one JSON object {name: VmRSS KiB, name/anon: RssAnon, name/file: RssFile}."""
    procs = parse_procs(args.procs)
    out = {}
    for name, pid in procs.items():
        m = memory_kib(pid)
        out[name] = m["VmRSS"]
        out[f"{name}/anon"] = m["RssAnon"]
        out[f"{name}/file"] = m["RssFile"]
    print(json.dumps(out))


# === report ===


def cmd_report(args):
    records = []
    with open(args.records) as f:
        for line in f:
            r = json.loads(line)
            if r.get("phase") == "measure":
                r["load"] = oha_summary(r["oha"])
                records.append(r)
    idle = json.load(open(args.idle_rss)) if args.idle_rss else {}
    idle_after = json.load(open(args.idle_rss_after)) if args.idle_rss_after else {}
    pairs = {"strait": ["client-sidecar", "echo-sidecar"], "haproxy": ["haproxy-a", "haproxy-b"]}
    rounds = sorted({r["round"] for r in records})
    by = {(r["round"], r["path"]): r for r in records}
    out = []

    # Per run.
    out.append("Every run (latency from oha with `--latency-correction`, i.e. from each request's scheduled send time):")
    out.append("")
    out.append("| round | path | 200s | other | errors | achieved rps | p50 ms | p99 ms | p99.9 ms | max ms | proxy-pair CPU s per 1,000 req | nginx CPU s per 1,000 req | machine cores busy |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        l = r["load"]
        n = max(l["ok"] + l["non200"], 1)
        pair = pairs.get(r["path"])
        pair_cpu = sum(r["cpu_s"][p] for p in pair) / n * 1000 if pair else None
        nginx_cpu = r["cpu_s"].get("nginx", 0) / n * 1000
        out.append(
            f"| {r['round']} | {r['path']} | {l['ok']} | {l['non200']} | {l['errors']} | {fmt(l['rps'], 0)} | "
            f"{fmt(l['p50'])} | {fmt(l['p99'])} | {fmt(l['p999'])} | {fmt(l['max'], 2)} | "
            f"{fmt(pair_cpu)} | {fmt(nginx_cpu)} | {fmt(r['machine_cores_busy'], 2)} |"
        )
    kinds = sorted({k for r in records for k in r["load"]["error_kinds"]})
    if kinds:
        out.append("")
        out.append("oha's errors: " + "; ".join(f"`{k}`" for k in kinds))
    out.append("")

    # Latency summary: median over rounds; added = path − direct of the same round.
    out.append(f"Latency, median over {len(rounds)} rounds (range in brackets); added = path − direct of the same round:")
    out.append("")
    out.append("| path | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    added = {}
    for path in PATHS:
        rs = [by[(k, path)] for k in rounds if (k, path) in by]
        row = [PATH_NAMES[path]]
        for q in ["p50", "p99", "p999"]:
            vals = [r["load"][q] for r in rs]
            row.append(f"{fmt(med(vals))} ({span(vals)})")
        for q in ["p50", "p99", "p999"]:
            vals = []
            for k in rounds:
                if (k, path) in by and (k, "direct") in by:
                    a, d = by[(k, path)]["load"][q], by[(k, "direct")]["load"][q]
                    if a is not None and d is not None:
                        vals.append(a - d)
            added[(path, q)] = vals
            row.append("–" if path == "direct" else f"{fmt(med(vals))} ({span(vals)})")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("| Strait / haproxy | p50 | p99 | p99.9 |")
    out.append("|---|---:|---:|---:|")
    for label, kind in [("total latency", "total"), ("added latency", "added")]:
        row = [label]
        for q in ["p50", "p99", "p999"]:
            ratios = []
            for k in rounds:
                if (k, "strait") not in by or (k, "haproxy") not in by:
                    continue
                s, h = by[(k, "strait")]["load"][q], by[(k, "haproxy")]["load"][q]
                if kind == "added":
                    d = by[(k, "direct")]["load"][q]
                    s, h = s - d, h - d
                if h and h > 0:
                    ratios.append(s / h)
            row.append(f"{fmt(med(ratios), 2)} ({span(ratios, 2)})")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    # How often each pair wins a round: the machine's drift between steps is often larger than
    # the difference, and a median of ratios alone hides whether one side wins consistently.
    wins = [
        s <= h
        for s, h in (
            (by[(k, "strait")]["load"]["p99"], by[(k, "haproxy")]["load"]["p99"])
            for k in rounds
            if (k, "strait") in by and (k, "haproxy") in by
        )
    ]
    out.append(f"Strait's p99 at or below haproxy's in {sum(wins)} of {len(wins)} rounds.")
    out.append("")

    # Resources.
    out.append(
        "Resident memory (VmRSS, MiB): idle before any load, during the load (samples every 0.25 s), idle after; "
        "anon / file = RssAnon (heap, stacks, relocated data) / RssFile (pages of the executable and libraries):"
    )
    out.append("")
    out.append(
        "| process | idle before | of which anon / file | under load: mean | under load: max | of which anon / file | idle after |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    mib = lambda kib: fmt(kib / 1024, 1)
    for path, names in pairs.items():
        rs = [by[(k, path)] for k in rounds if (k, path) in by]
        for name in names:
            means = [r["rss_kib"][name]["mean"] for r in rs]
            top = max((r["rss_kib"][name] for r in rs), key=lambda m: m["max"], default=None)
            split_idle = f"{mib(idle.get(name + '/anon', 0))} / {mib(idle.get(name + '/file', 0))}"
            split_top = (
                f"{mib(top.get('anon_at_max', 0))} / {mib(top.get('file_at_max', 0))}" if top else "–"
            )
            out.append(
                f"| {name} | {mib(idle.get(name, 0))} | {split_idle} | "
                f"{fmt(statistics.fmean(means) / 1024 if means else None, 1)} | "
                f"{mib(top['max']) if top else '–'} | {split_top} | {mib(idle_after.get(name, 0))} |"
            )
    out.append("")
    out.append("CPU seconds per 1,000 requests (user + system, both processes of the pair; median over rounds, range in brackets):")
    out.append("")
    out.append("| pair | CPU s / 1,000 req | of which client side | of which server side | nginx behind it |")
    out.append("|---|---:|---:|---:|---:|")
    cpu_med = {}
    for path, names in pairs.items():
        rs = [by[(k, path)] for k in rounds if (k, path) in by]

        def per_k(r, name):
            n = max(r["load"]["ok"] + r["load"]["non200"], 1)
            return r["cpu_s"][name] / n * 1000

        total = [sum(per_k(r, n) for n in names) for r in rs]
        first = [per_k(r, names[0]) for r in rs]
        second = [per_k(r, names[1]) for r in rs]
        ngx = [per_k(r, "nginx") for r in rs]
        cpu_med[path] = med(total)
        out.append(
            f"| {path} ({names[0]} + {names[1]}) | {fmt(med(total), 4)} ({span(total, 4)}) | {fmt(med(first), 4)} | "
            f"{fmt(med(second), 4)} | {fmt(med(ngx), 4)} |"
        )
    rs = [by[(k, "direct")] for k in rounds if (k, "direct") in by]
    ngx = [r["cpu_s"]["nginx"] / max(r["load"]["ok"] + r["load"]["non200"], 1) * 1000 for r in rs]
    out.append(f"| direct (no proxy) | – | – | – | {fmt(med(ngx), 4)} |")
    out.append("")

    # Targets.
    sp99 = med(added[("strait", "p99")])
    hp99 = med(added[("haproxy", "p99")])
    load_max = max(
        (r["rss_kib"][n]["max"] for r in records if r["path"] == "strait" for n in pairs["strait"]),
        default=0,
    )
    out.append("Targets:")
    out.append("")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    if sp99 is not None and hp99 is not None:
        out.append(
            f"| added p99 no worse than the haproxy pair | Strait {fmt(sp99)} ms vs haproxy {fmt(hp99)} ms (medians) | {'yes' if sp99 <= hp99 else 'no'} |"
        )
        out.append(f"| added p99 ≤ 0.5 ms on loopback | {fmt(sp99)} ms | {'yes' if sp99 <= 0.5 else 'no'} |")
    out.append(
        f"| ≤ 20 MB resident per sidecar under load | max {fmt(load_max / 1024, 1)} MiB ({fmt(load_max * 1024 / 1e6, 1)} MB) | {'yes' if load_max * 1024 <= 20e6 else 'no'} |"
    )
    print("\n".join(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="run a load command while sampling processes")
    s.add_argument("--procs", required=True, help="name=pid,name=pid")
    s.add_argument("--record", required=True, help="JSON-lines file to append the record to")
    s.add_argument("--oha-json", required=True, help="where the load command's stdout goes")
    s.add_argument("--round", type=int, default=0)
    s.add_argument("--path", required=True)
    s.add_argument("--phase", default="measure", choices=["measure", "warmup", "perf"])
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sample)
    m = sub.add_parser("rss", help="print VmRSS (KiB) of processes as JSON")
    m.add_argument("--procs", required=True)
    m.set_defaults(func=cmd_rss)
    r = sub.add_parser("report", help="markdown tables from the records")
    r.add_argument("--records", required=True)
    r.add_argument("--idle-rss")
    r.add_argument("--idle-rss-after")
    r.set_defaults(func=cmd_report)
    args = drop_separator(parser.parse_args())
    args.func(args)


if __name__ == "__main__":
    main()
