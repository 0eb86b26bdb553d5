#!/usr/bin/env python3
"""Checks and reports for the sidecar instruction count (bench/sidecar-callgrind.sh).

Standard library only. Subcommands:

  oha-check FILE N     Fails unless oha's JSON output FILE shows exactly N answers, all 200,
                       and no errors (a count over failed requests would be meaningless).
  totals FILE          Prints the instruction count (Ir) of one callgrind dump.
  report ...           Writes the JSON and the markdown of one run from the counts.

The script owns the processes and valgrind; this file only reads files and writes the report.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from benchlib import parse_meta, summary_header  # noqa: E402

# The two proxies of each pair, in the order of the tables in docs/benchmarks.md.
PAIRS = {
    "strait": ("client-sidecar", "echo-sidecar"),
    "haproxy": ("haproxy-a", "haproxy-b"),
}


def fail(message):
    print(f"callgrind_report.py: {message}", file=sys.stderr)
    sys.exit(1)


def oha_check(path, expected):
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read oha's output {path}: {e}")
    codes = {str(k): int(v) for k, v in (out.get("statusCodeDistribution") or {}).items()}
    errors = out.get("errorDistribution") or {}
    if codes != {"200": expected} or errors:
        fail(f"{path}: expected {expected} answers of 200 and no errors, got status codes "
             f"{codes} and errors {errors}")


def totals(path):
    """Ir of a dump: its `totals:` line (callgrind writes `summary:` too; the same here)."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"(?:totals|summary):\s+(\d+)", line)
                if m:
                    return int(m.group(1))
    except OSError as e:
        fail(f"cannot read callgrind dump {path}: {e}")
    fail(f"{path}: no totals line (an incomplete dump?)")


def per_request(instructions, requests):
    return instructions / requests


def hundreds(x):
    """Rounded to 100, as the tables in docs/benchmarks.md give them."""
    return f"{int(round(x / 100.0)) * 100:,}"


def report(args):
    counts = {}
    for item in args.count:
        name, _, rest = item.partition("=")
        instructions, _, dump = rest.partition(":")
        counts[name] = {"instructions": int(instructions), "dump": dump}
    missing = [n for pair in PAIRS.values() for n in pair if n not in counts]
    if missing:
        fail(f"no count for {', '.join(missing)}")
    for item in args.handshake:
        name, _, n = item.partition("=")
        if name in counts:
            # A full handshake costs millions of instructions; a smaller match is a helper of
            # the record layer (rustls names a few `*handshake*`), not a handshake.
            n = int(n or 0)
            counts[name]["tls_handshake_instructions"] = n if n >= 1_000_000 else 0
    for c in counts.values():
        c["per_request"] = round(per_request(c["instructions"], args.requests), 1)
    pairs = {}
    for pair, (first, second) in PAIRS.items():
        pairs[pair] = {
            "processes": [first, second],
            "per_request": round(counts[first]["per_request"] + counts[second]["per_request"], 1),
        }
    ratio = pairs["strait"]["per_request"] / pairs["haproxy"]["per_request"]
    meta = parse_meta(args.meta)
    out = {
        **summary_header(
            "sidecar-callgrind", args.stamp, args.commit, args.binary, args.binary_sha256, args.script_commit
        ),
        "requests": args.requests,
        "warmup_requests": args.warmup,
        "load": meta.get("load", ""),
        "processes": counts,
        "strait_pair": pairs["strait"],
        "haproxy_pair": pairs["haproxy"],
        "ratio_strait_to_haproxy": round(ratio, 4),
        "tools": {k: v for k, v in meta.items() if k != "load"},
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")

    c = counts
    lines = [
        f"Run {args.stamp}, `bench/sidecar-callgrind.sh`: binary `{args.binary}` "
        f"(commit {args.commit}, sha256 {args.binary_sha256[:12]}), script at commit "
        f"{args.script_commit}.",
        "",
        f"User-space instructions (callgrind `Ir`) of each proxy over exactly {args.requests:,} "
        f"requests ({meta.get('load', '')}), after {args.warmup:,} to warm up, divided by "
        f"{args.requests:,}; background work in that window (timers, the zone stream) counts too.",
        "",
    ]
    tables = [
        "| process | instructions | per request |",
        "|---|---:|---:|",
    ]
    for name in (*PAIRS["strait"], *PAIRS["haproxy"]):
        tables.append(f"| {name} | {c[name]['instructions']:,} | {c[name]['per_request']:,.1f} |")
    tables += [
        "",
        "| build | client sidecar | echo sidecar | pair | vs haproxy pair |",
        "|---|---:|---:|---:|---:|",
        f"| commit {args.commit} | {hundreds(c['client-sidecar']['per_request'])} | "
        f"{hundreds(c['echo-sidecar']['per_request'])} | "
        f"{hundreds(pairs['strait']['per_request'])} | {ratio:.2f}× |",
        f"| {meta.get('haproxy', 'haproxy')} (a / b) | "
        f"{hundreds(c['haproxy-a']['per_request'])} | {hundreds(c['haproxy-b']['per_request'])} | "
        f"{hundreds(pairs['haproxy']['per_request'])} | 1 |",
    ]
    shaken = {n: c["tls_handshake_instructions"] for n, c in counts.items()
              if c.get("tls_handshake_instructions")}
    if shaken:
        tables += [
            "",
            "**Warning:** TLS handshakes fell in the counted window (a new upstream connection), "
            "which is not per-request work: "
            + ", ".join(f"{n} {v / args.requests:,.0f} per request" for n, v in shaken.items())
            + ". Compare those processes with care.",
        ]
    lines += tables + [
        "",
        "```",
        *(f"{k}: {v}" for k, v in meta.items() if k != "load"),
        "```",
    ]
    with open(args.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(tables))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("oha-check")
    p.add_argument("file")
    p.add_argument("expected", type=int)
    p = sub.add_parser("totals")
    p.add_argument("file")
    p = sub.add_parser("report")
    p.add_argument("--count", action="append", default=[], help="NAME=INSTRUCTIONS:DUMP")
    p.add_argument("--handshake", action="append", default=[], help="NAME=INSTRUCTIONS in TLS handshakes")
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--stamp", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--binary-sha256", required=True)
    p.add_argument("--script-commit", required=True)
    p.add_argument("--meta", action="append", default=[], help="KEY=VALUE, kept in the report")
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    args = parser.parse_args()
    if args.cmd == "oha-check":
        oha_check(args.file, args.expected)
    elif args.cmd == "totals":
        print(totals(args.file))
    else:
        report(args)


if __name__ == "__main__":
    main()
