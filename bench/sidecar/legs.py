#!/usr/bin/env python3
"""Per-leg processing time of proxies, from syscall tracepoints (docs/benchmarks.md, "Sidecar").

A proxy handles each request in two legs: it wakes with the request and writes it upstream,
then wakes with the response and writes it downstream. This prints, per process and per
socket written, how long each leg took from the wake-up (`epoll_wait` returning events) to
the forwarding write (`writev`/`sendto`), as p50/p90/p99. That is the proxy's own processing
time on the request's path, without the scheduler's and the other processes' share that an
end-to-end latency mixes in, so two builds or two proxies compare with far less noise.

Record while a fixed, low load runs (one connection, so legs do not overlap), then read:

    perf record -q -a -o legs.data \\
      -e syscalls:sys_enter_writev,syscalls:sys_enter_sendto \\
      -e syscalls:sys_exit_epoll_wait,syscalls:sys_enter_epoll_wait \\
      -- oha -z 3s -q 500 -c 1 --no-tui http://ADDR/
    bench/sidecar/legs.py legs.data PID [PID ...]

Needs root (system-wide tracepoints) and `perf`. Tracing adds a few microseconds per syscall:
compare runs recorded the same way, not these figures with untraced latencies.
"""
import collections
import re
import subprocess
import sys

LINE = re.compile(r"\s*(\S.*?)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)")
WRITES = ("syscalls:sys_enter_writev", "syscalls:sys_enter_sendto")


def legs(script, pids):
    """{(pid, fd): [µs from wake-up to forwarding write]} from `perf script` text."""
    woke = {}
    out = collections.defaultdict(list)
    for line in script.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        _comm, pid, t, event, rest = m.groups()
        if pid not in pids:
            continue
        t = float(t)
        if event == "syscalls:sys_exit_epoll_wait" and not rest.startswith("0x0"):
            woke[pid] = t
        elif event in WRITES and pid in woke:
            fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
            if fd:
                out[(pid, fd.group(1))].append((t - woke.pop(pid)) * 1e6)
        elif event == "syscalls:sys_enter_epoll_wait":
            woke.pop(pid, None)  # went back to sleep without writing
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data, pids = sys.argv[1], set(sys.argv[2:])
    script = subprocess.run(
        ["perf", "script", "-i", data], capture_output=True, text=True, check=True
    ).stdout
    for (pid, fd), times in sorted(legs(script, pids).items()):
        if len(times) < 50:
            continue  # not a request path (admin, discovery)
        times.sort()
        n = len(times)
        p = lambda q: times[min(n - 1, int(n * q))]
        print(f"pid {pid} fd {fd}: {n} legs, p50 {p(0.5):.1f} µs, p90 {p(0.9):.1f} µs, p99 {p(0.99):.1f} µs")


if __name__ == "__main__":
    main()
