#!/usr/bin/env python3
"""Measuring and reporting for the gRPC unary latency benchmark (bench/grpc-run.sh).

Standard library only. Subcommands:

  sample   Runs one grpc-load step while measuring around it: CPU time of the given processes
           (/proc/PID/stat utime+stime) before and after, the load generator's own CPU (its
           rusage), the whole machine's busy time (/proc/stat), and the client sidecar's
           request counter by serving zone (`strait_sidecar_outbound_requests_total` of the
           service; a unary call is one HTTP/2 request) before and after. With --expect-zone it fails unless exactly the step's calls went
           to that zone (`local`, a zone name, or `none` for paths that bypass the sidecar):
           a step that did not take its path must not be measured as if it had. Appends one
           JSON record.
  report   Reads the records and writes the markdown tables (stdout) and the JSON summary.

The script owns the processes; this file only reads /proc, files and one metrics page.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from benchlib import CpuWindow, drop_separator, fmt, med, parse_meta, parse_procs, summary_header  # noqa: E402

PATHS = ["direct", "strait", "cross-zone", "haproxy"]
PATH_NAMES = {
    "direct": "direct (grpc-load → interop server)",
    "strait": "Strait sidecar pair, same zone (mTLS, h2)",
    "cross-zone": "Strait across zones (sidecar → gateway → QUIC → gateway → sidecar)",
    "haproxy": "haproxy pair (mTLS, h2 on every leg)",
}
# The proxies each path crosses, for CPU per call; the server each path ends at.
PROXIES = {
    "strait": ["client-sidecar", "interop-a-sidecar"],
    "cross-zone": ["client-sidecar", "gateway-a", "gateway-b", "interop-b-sidecar"],
    "haproxy": ["haproxy-a", "haproxy-b"],
}
SERVER = {"direct": "interop-a", "strait": "interop-a", "cross-zone": "interop-b", "haproxy": "interop-a"}
QUANTILES = ["p50", "p90", "p99", "p999"]
Q_NAMES = {"p50": "p50", "p90": "p90", "p99": "p99", "p999": "p99.9"}
# Issue 20: a gRPC call through a sidecar pair adds no more than an HTTP/1.1 request does.
TARGET_ADDED_P99_MS = 0.25
# Cores busy with other work (median over the steps) above which the report warns.
NOISY_OTHER_CORES = 0.25


# === metrics reader ===


# Every request, whatever its status: a failed call must be counted where it went too. (The
# gRPC-specific `strait_sidecar_outbound_grpc_calls_total` is newer than some builds compared.)
SAMPLE = re.compile(r"^strait_sidecar_outbound_requests_total\{([^}]*)\}\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def grpc_calls(url, service):
    """{zone: requests} of `service` from the client sidecar's /metrics (every status summed)."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        page = answer.read().decode("utf-8", "replace")
    calls = {}
    for line in page.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(1)))
        if labels.get("service") != service:
            continue
        zone = labels.get("zone", "?")
        calls[zone] = calls.get(zone, 0) + float(m.group(2))
    return calls


# === sample ===


def cmd_sample(args):
    procs = parse_procs(args.procs)
    record = {"round": args.round, "path": args.path, "phase": args.phase, "out": args.out}
    calls0 = grpc_calls(args.metrics, args.service) if args.metrics else {}
    with CpuWindow(procs) as window, open(args.out, "w") as out:
        child = subprocess.Popen(args.command, stdout=out)
        # wait4 rather than wait: the load generator's own CPU comes with its exit status.
        _, raw_status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(raw_status)
    record["elapsed_s"] = window.elapsed_s
    record["exit"] = child.returncode
    record["cpu_s"] = window.cpu_s
    record["load_cpu_s"] = usage.ru_utime + usage.ru_stime
    record["machine_cores_busy"] = window.machine_cores_busy
    try:
        with open(args.out) as f:
            record["load"] = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        record["load"] = None
    # Calls the step made in all: the first (untimed) call, grpc-load's own warm-up, the
    # measured ones. The CPU window covers all of them.
    load = record["load"] or {}
    record["calls_in_window"] = 1 + args.warmup_calls + load.get("calls", 0)
    if args.metrics:
        calls1 = grpc_calls(args.metrics, args.service)
        record["sidecar_calls"] = {
            z: calls1.get(z, 0) - calls0.get(z, 0) for z in sorted(set(calls0) | set(calls1))
        }
        record["sidecar_calls"] = {z: int(n) for z, n in record["sidecar_calls"].items() if n}
    with open(args.record, "a") as f:
        f.write(json.dumps(record) + "\n")
    if child.returncode not in (0, 1) or record["load"] is None:
        # 2: bad flags or the target unreachable; anything else: killed.
        sys.exit(f"{args.path} ({args.phase}): grpc-load exited with {child.returncode}; output in {args.out}")
    if args.expect_zone:
        seen = record.get("sidecar_calls", {})
        want = {} if args.expect_zone == "none" else {args.expect_zone: record["calls_in_window"]}
        if seen != want:
            sys.exit(
                f"{args.path} ({args.phase}): the client sidecar counted {seen or 'no calls'} "
                f"for {args.service}, expected {want or 'none'}: the step did not take its path"
            )


# === report ===


def spread(values):
    """{median, min, max} of the values, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {k: rounded(v) for k, v in (("median", statistics.median(values)), ("min", min(values)), ("max", max(values)))}


def rounded(v):
    """Microseconds of a millisecond figure, a tenth of a millisecond of CPU per 1,000 calls."""
    return None if v is None else round(v, 4)


def cell(values, digits=3):
    """'median (min–max)' for a table."""
    s = spread(values)
    if s is None:
        return "–"
    if s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}–{fmt(s['max'], digits)})"


def other_cores(record):
    """Cores busy with anything but the processes sampled and grpc-load: other work on the
    machine (builds, tests), which makes a step's latency noise rather than signal."""
    ours = sum(record["cpu_s"].values()) + record["load_cpu_s"]
    return max(record["machine_cores_busy"] - ours / max(record["elapsed_s"], 1e-9), 0.0)


def per_1000(record, names):
    n = max(record["calls_in_window"], 1)
    return sum(record["cpu_s"].get(name, 0.0) for name in names) / n * 1000


def cmd_report(args):
    steps = []
    with open(args.records) as f:
        for line in f:
            r = json.loads(line)
            if r.get("phase") == "measure":
                steps.append(r)
    rounds = sorted({r["round"] for r in steps})
    by = {(r["round"], r["path"]): r for r in steps}
    lat = lambda r, q: (r["load"] or {}).get("latency_ms", {}).get(q)
    out = []

    # Every step.
    out.append(
        "Every step (latency from each call's scheduled start, so a stall is not hidden by the "
        "generator waiting; `via client sidecar` = the client sidecar's request counter of "
        "`demo/interop` by serving zone over the step, first call and warm-up included):"
    )
    out.append("")
    out.append(
        "| round | path | OK | failed | dropped | achieved calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| proxies CPU s / 1,000 calls | server CPU s / 1,000 | grpc-load CPU s / 1,000 | machine cores busy | of which other work | via client sidecar |"
    )
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    failed = dropped = 0
    errors = {}
    for r in steps:
        l = r["load"] or {}
        nfail = sum(l.get("errors", {}).values())
        failed += nfail
        dropped += l.get("dropped", 0)
        for code, n in l.get("errors", {}).items():
            errors[code] = errors.get(code, 0) + n
        proxies = PROXIES.get(r["path"])
        via = ", ".join(f"{z} {int(n)}" for z, n in r.get("sidecar_calls", {}).items()) or "–"
        out.append(
            f"| {r['round']} | {r['path']} | {l.get('ok', 0)} | {nfail} | {l.get('dropped', 0)} | "
            f"{fmt(l.get('achieved_rate'), 0)} | {fmt(lat(r, 'p50'))} | {fmt(lat(r, 'p90'))} | "
            f"{fmt(lat(r, 'p99'))} | {fmt(lat(r, 'p999'))} | {fmt(lat(r, 'max'), 2)} | "
            f"{fmt(per_1000(r, proxies), 4) if proxies else '–'} | {fmt(per_1000(r, [SERVER[r['path']]]), 4)} | "
            f"{fmt(r['load_cpu_s'] / max(r['calls_in_window'], 1) * 1000, 4)} | "
            f"{fmt(r['machine_cores_busy'], 2)} | {fmt(other_cores(r), 2)} | {via} |"
        )
    busy = med([other_cores(r) for r in steps])
    if busy is not None and busy > NOISY_OTHER_CORES:
        out.append("")
        out.append(
            f"**The machine was busy with other work** (median {fmt(busy, 2)} cores besides the benchmark's "
            "processes over the steps): the latencies below are noise as much as signal; run again on a quiet machine."
        )
    if errors:
        out.append("")
        out.append("**Failed calls** by status: " + ", ".join(f"`{k}` {v}" for k, v in sorted(errors.items())))
    out.append("")

    # Latency: median over rounds; added = path − direct of the same round.
    def added(path, q):
        vals = []
        for k in rounds:
            if (k, path) in by and (k, "direct") in by:
                a, d = lat(by[(k, path)], q), lat(by[(k, "direct")], q)
                if a is not None and d is not None:
                    vals.append(a - d)
        return vals

    def total(path, q):
        return [lat(by[(k, path)], q) for k in rounds if (k, path) in by]

    out.append(
        f"Latency, median over {len(rounds)} round(s) (range in brackets); added = path − direct "
        "of the same round:"
    )
    out.append("")
    out.append(
        "| path | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 ms | added p90 ms | added p99 ms | added p99.9 ms |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in PATHS:
        row = [PATH_NAMES[path]] + [cell(total(path, q)) for q in QUANTILES]
        row += ["–" if path == "direct" else cell(added(path, q)) for q in QUANTILES]
        out.append("| " + " | ".join(row) + " |")
    out.append("")

    def ratios(kind, num, den, q):
        vals = []
        for k in rounds:
            if (k, num) not in by or (k, den) not in by or (k, "direct") not in by:
                continue
            s, h = lat(by[(k, num)], q), lat(by[(k, den)], q)
            if kind == "added":
                d = lat(by[(k, "direct")], q)
                s, h = s - d, h - d
            if h and h > 0:
                vals.append(s / h)
        return vals

    out.append("Ratios, median of the per-round ratios (range in brackets):")
    out.append("")
    out.append("| ratio | p50 | p90 | p99 | p99.9 |")
    out.append("|---|---:|---:|---:|---:|")
    ratio_json = {}
    for label, kind, num, den in [
        ("Strait same zone / haproxy pair: total latency", "total", "strait", "haproxy"),
        ("Strait same zone / haproxy pair: added latency", "added", "strait", "haproxy"),
        ("across zones / same zone: added latency", "added", "cross-zone", "strait"),
    ]:
        ratio_json[f"{num}/{den} {kind}"] = {Q_NAMES[q]: spread(ratios(kind, num, den, q)) for q in QUANTILES}
        out.append(f"| {label} | " + " | ".join(cell(ratios(kind, num, den, q), 2) for q in QUANTILES) + " |")
    out.append("")
    wins = [
        lat(by[(k, "strait")], "p99") <= lat(by[(k, "haproxy")], "p99")
        for k in rounds
        if (k, "strait") in by and (k, "haproxy") in by
    ]
    out.append(f"Strait's same-zone p99 at or below the haproxy pair's in {sum(wins)} of {len(wins)} rounds.")
    gw = [a - s for a, s in zip(added("cross-zone", "p50"), added("strait", "p50"))]
    out.append(
        f"What the two gateways and the QUIC hop add on top of the sidecar pair (cross-zone − same zone, "
        f"p50, median over rounds): {cell(gw)} ms."
    )
    out.append("")

    # CPU.
    out.append(
        "CPU seconds per 1,000 calls (user + system over each step, first call and grpc-load's "
        "1 s warm-up included in the calls counted; median over rounds, range in brackets):"
    )
    out.append("")
    out.append("| path | proxies on the path | CPU s / 1,000 calls | by process | server behind it | grpc-load |")
    out.append("|---|---|---:|---|---:|---:|")
    cpu_json = {}
    for path in PATHS:
        rs = [by[(k, path)] for k in rounds if (k, path) in by]
        names = PROXIES.get(path, [])
        pair = [per_1000(r, names) for r in rs] if names else []
        each = {n: med([per_1000(r, [n]) for r in rs]) for n in names}
        server = [per_1000(r, [SERVER[path]]) for r in rs]
        loadgen = [r["load_cpu_s"] / max(r["calls_in_window"], 1) * 1000 for r in rs]
        cpu_json[path] = {
            "proxies": spread(pair),
            "by_process": {n: rounded(v) for n, v in each.items()},
            "server": spread(server),
            "load_generator": spread(loadgen),
        }
        out.append(
            f"| {path} | {' + '.join(names) or '–'} | {cell(pair, 4) if names else '–'} | "
            f"{', '.join(f'{n} {fmt(v, 4)}' for n, v in each.items()) or '–'} | "
            f"{cell(server, 4)} | {cell(loadgen, 4)} |"
        )
    sp = cpu_json["strait"]["proxies"]
    hp = cpu_json["haproxy"]["proxies"]
    cpu_ratio = sp["median"] / hp["median"] if sp and hp and hp["median"] > 0 else None
    out.append("")
    out.append(f"CPU per call, Strait same-zone pair / haproxy pair (medians): {fmt(cpu_ratio, 2)}×.")
    if cpu_ratio is not None:
        cpu_ratio = round(cpu_ratio, 3)
    out.append("")

    # Targets.
    strait_p99 = med(added("strait", "p99"))
    targets = [
        {
            "target": "added p99 through a sidecar pair, same zone, ≤ 0.25 ms on loopback (issue 20)",
            "measured_ms": rounded(strait_p99),
            "limit_ms": TARGET_ADDED_P99_MS,
            "met": None if strait_p99 is None else strait_p99 <= TARGET_ADDED_P99_MS,
        }
    ]
    out.append("Targets:")
    out.append("")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    noisy = busy is not None and busy > NOISY_OTHER_CORES
    for t in targets:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        if noisy and t["met"] is not None:
            met += " (machine busy with other work: not conclusive)"
        out.append(f"| {t['target']} | {fmt(t['measured_ms'])} ms (median over rounds) | {met} |")
    haproxy_p99 = med(added("haproxy", "p99"))
    out.append("")
    out.append(
        f"For reference, not a target: the haproxy pair added {fmt(haproxy_p99)} ms at p99 in the same run."
    )
    if failed or dropped:
        out.append("")
        out.append(f"**{failed} calls failed and {dropped} were dropped in the measured steps**: the figures above leave them out.")
    print("\n".join(out))

    if args.json:
        meta = parse_meta(args.meta)
        paths = {}
        for path in PATHS:
            rs = [by[(k, path)] for k in rounds if (k, path) in by]
            paths[path] = {
                "description": PATH_NAMES[path],
                "target": meta.get(f"target.{path}", ""),
                "latency_ms": {Q_NAMES[q]: spread(total(path, q)) for q in QUANTILES},
                "added_ms": None if path == "direct" else {Q_NAMES[q]: spread(added(path, q)) for q in QUANTILES},
                "calls_ok": sum((r["load"] or {}).get("ok", 0) for r in rs),
                "calls_failed": sum(sum((r["load"] or {}).get("errors", {}).values()) for r in rs),
                "calls_dropped": sum((r["load"] or {}).get("dropped", 0) for r in rs),
                "cpu_s_per_1000_calls": cpu_json[path],
            }
        summary = {
            **summary_header(
                "grpc",
                stamp=meta.get("stamp", ""),
                commit=meta.get("commit", ""),
                binary=meta.get("binary", ""),
                binary_sha256=meta.get("binary_sha256", ""),
                script_commit=meta.get("script_commit", ""),
            ),
            "rate": args.rate,
            "duration": meta.get("duration", ""),
            "warmup": meta.get("warmup", ""),
            "rounds": len(rounds),
            "load": meta.get("load", ""),
            "paths": paths,
            "ratios": ratio_json,
            "strait_p99_at_or_below_haproxy": {"rounds": sum(wins), "of": len(wins)},
            "cpu_ratio_strait_to_haproxy": cpu_ratio,
            "targets": targets,
            "other_work_cores_busy_median": rounded(busy),
            "machine_busy_with_other_work": noisy,
            "failed_calls": failed,
            "dropped_calls": dropped,
            "steps": [
                {
                    "round": r["round"],
                    "path": r["path"],
                    "ok": (r["load"] or {}).get("ok", 0),
                    "failed": sum((r["load"] or {}).get("errors", {}).values()),
                    "errors": (r["load"] or {}).get("errors", {}),
                    "dropped": (r["load"] or {}).get("dropped", 0),
                    "achieved_rate": (r["load"] or {}).get("achieved_rate"),
                    "latency_ms": (r["load"] or {}).get("latency_ms"),
                    "service_ms": (r["load"] or {}).get("service_ms"),
                    "calls_in_window": r["calls_in_window"],
                    "cpu_s": {n: rounded(v) for n, v in r["cpu_s"].items()},
                    "load_generator_cpu_s": rounded(r["load_cpu_s"]),
                    "machine_cores_busy": rounded(r["machine_cores_busy"]),
                    "other_work_cores_busy": rounded(other_cores(r)),
                    "client_sidecar_calls_by_zone": r.get("sidecar_calls", {}),
                }
                for r in steps
            ],
            "tools": {k: v for k, v in meta.items() if k.startswith("tool.")},
        }
        summary["tools"] = {k[len("tool.") :]: v for k, v in summary["tools"].items()}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="run one grpc-load step while measuring")
    s.add_argument("--procs", required=True, help="name=pid,name=pid")
    s.add_argument("--record", required=True, help="JSON-lines file to append the record to")
    s.add_argument("--out", required=True, help="where grpc-load's stdout (its JSON) goes")
    s.add_argument("--round", type=int, default=0)
    s.add_argument("--path", required=True)
    s.add_argument("--phase", default="measure", choices=["measure", "warmup"])
    s.add_argument("--warmup-calls", type=int, default=0, help="calls grpc-load makes in its own -warmup")
    s.add_argument("--metrics", help="the client sidecar's /metrics URL")
    s.add_argument("--service", default="demo/interop")
    s.add_argument("--expect-zone", help="local, a zone, or none: where the step's calls must go")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sample)
    r = sub.add_parser("report", help="markdown tables (stdout) and the JSON summary")
    r.add_argument("--records", required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--json", help="where to write the JSON summary")
    r.add_argument("--meta", action="append", default=[], help="KEY=VALUE for the JSON summary")
    r.set_defaults(func=cmd_report)
    args = drop_separator(parser.parse_args())
    args.func(args)


if __name__ == "__main__":
    main()
