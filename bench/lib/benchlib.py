"""What the benchmarks' Python helpers share (bench/grpc/grpc_bench.py,
bench/sidecar/sidecar_bench.py, bench/gateway/gateway_bench.py, bench/sidecar/callgrind_report.py).

Standard library only, like the helpers. It owns reading CPU time from /proc around a load step
(`CpuWindow`), oha's JSON output, the number formatting of the report tables, and the fields
that open every JSON summary. The scripts own the processes; this only reads /proc and files.

Imported by path: each helper puts bench/lib on sys.path first (they run as plain scripts).
`python3 bench/lib/benchlib.py` runs the self-check.
"""

import json
import os
import statistics
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# === /proc ===


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name may contain spaces or parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # without guest, already counted in user
    return total - idle, total


def parse_procs(spec):
    """'name=pid,name=pid' → {name: pid}."""
    procs = {}
    for item in filter(None, spec.split(",")):
        name, pid = item.split("=")
        procs[name] = int(pid)
    return procs


class CpuWindow:
    """Measures a with-block: the CPU seconds each of `procs` ({name: pid}) spent in it
    (`cpu_s`), how many cores the whole machine kept busy on average (`machine_cores_busy`;
    more than the processes' share means other work ran beside the step) and the wall time
    (`elapsed_s`)."""

    def __init__(self, procs):
        self.procs = procs

    def __enter__(self):
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.procs.items()}
        self._busy0, self._total0 = machine_ticks()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.elapsed_s = time.monotonic() - self._t0
        busy1, total1 = machine_ticks()
        self.cpu_s = {name: cpu_seconds(pid) - self._cpu0[name] for name, pid in self.procs.items()}
        ncpu = os.cpu_count() or 1
        self.machine_cores_busy = (busy1 - self._busy0) / max(total1 - self._total0, 1) * ncpu
        return False


# === Load generators ===


def oha_summary(path):
    """Requests, successes, errors and latency percentiles (ms) from oha's JSON output."""
    with open(path) as f:
        data = json.load(f)
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    ok = sum(int(v) for k, v in codes.items() if str(k) == "200")
    other = sum(int(v) for k, v in codes.items() if str(k) != "200")
    errors = sum(int(v) for v in data.get("errorDistribution", {}).values())
    summary = data.get("summary", {})

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1000.0

    return {
        "ok": ok,
        "non200": other,
        "errors": errors,
        "error_kinds": sorted(data.get("errorDistribution", {}).keys()),
        "rps": summary.get("requestsPerSec"),
        "mean": (summary.get("average") or 0) * 1000.0,
        "p50": ms("p50"),
        "p99": ms("p99"),
        "p999": ms("p99.9"),
        "max": (summary.get("slowest") or 0) * 1000.0,
    }


def drop_separator(args):
    """The load command after `sample ... --`: argparse's REMAINDER keeps the `--`."""
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


# === Report tables ===


def fmt(v, digits=3):
    """A table cell: the number, or a dash where there is none."""
    return "–" if v is None else f"{v:.{digits}f}"


def med(values):
    """The median of the values that exist, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def span(values, digits=3):
    """'min–max' of the values that exist, for the range in brackets after a median."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{fmt(min(values), digits)}–{fmt(max(values), digits)}"


# === JSON summaries ===


def parse_meta(items):
    """['KEY=VALUE', ...] (the scripts' --meta flags) → {KEY: VALUE}."""
    return dict(kv.partition("=")[::2] for kv in items)


def summary_header(benchmark, stamp, commit, binary, binary_sha256, script_commit):
    """The fields that open every JSON summary, in this order: which benchmark, when, and which
    build of Strait (named, its path and hash) measured by which version of the script."""
    return {
        "benchmark": benchmark,
        "stamp": stamp,
        "commit": commit,
        "binary": binary,
        "binary_sha256": binary_sha256,
        "script_commit": script_commit,
    }


def _self_check():
    import tempfile

    me = os.getpid()
    assert parse_procs("a=1,b=22,") == {"a": 1, "b": 22}
    with CpuWindow({"me": me}) as w:
        sum(i * i for i in range(200_000))  # some CPU, so that the window sees it
    assert w.elapsed_s > 0 and w.cpu_s["me"] >= 0 and w.machine_cores_busy >= 0
    assert fmt(None) == "–" and fmt(1.23456) == "1.235" and fmt(2, 0) == "2"
    assert med([3, None, 1, 2]) == 2 and med([None]) is None
    assert span([2.0, None, 1.0], 1) == "1.0–2.0" and span([]) == "–"
    assert parse_meta(["a=b=c", "d="]) == {"a": "b=c", "d": ""}
    assert list(summary_header("x", 1, 2, 3, 4, 5)) == [
        "benchmark", "stamp", "commit", "binary", "binary_sha256", "script_commit"
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(
            {
                "summary": {"requestsPerSec": 10.0, "average": 0.001, "slowest": 0.004},
                "latencyPercentiles": {"p50": 0.001, "p99": 0.002, "p99.9": 0.003},
                "statusCodeDistribution": {"200": 9, "503": 1},
                "errorDistribution": {"timeout": 2},
            },
            f,
        )
    try:
        s = oha_summary(f.name)
    finally:
        os.unlink(f.name)
    assert (s["ok"], s["non200"], s["errors"], s["error_kinds"]) == (9, 1, 2, ["timeout"]), s
    assert (s["p50"], s["p99"], s["p999"], s["max"]) == (1.0, 2.0, 3.0, 4.0), s
    print("benchlib: self-check passed")


if __name__ == "__main__":
    _self_check()
