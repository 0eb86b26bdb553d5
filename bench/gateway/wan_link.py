#!/usr/bin/env python3
"""A WAN-like link between two network namespaces, in user space (bench/gateway-run.sh).

The kernels these benchmarks run on have no `sch_netem` (`tc qdisc add ... netem` answers
"Specified qdisc kind is unknown"), so the link is two TUN devices, one per namespace, and
this process moves every IP packet from one to the other after a fixed one-way delay. Packets
keep their order; nothing is dropped or reordered. Standard library only.

  wan_link.py --ns-a NS --tun-a DEV --ns-b NS --tun-b DEV --delay-ms 10

The TUN devices must exist (`ip -n NS tuntap add dev DEV mode tun`); this attaches to them
and runs until killed.
"""

import argparse
import ctypes
import fcntl
import heapq
import os
import select
import struct
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

libc = ctypes.CDLL(None, use_errno=True)


def open_tun(ns, dev):
    """Attaches to TUN device `dev` of namespace `ns` (the calling thread joins it)."""
    with open(f"/run/netns/{ns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns-a", required=True)
    p.add_argument("--tun-a", required=True)
    p.add_argument("--ns-b", required=True)
    p.add_argument("--tun-b", required=True)
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay, each direction")
    args = p.parse_args()
    a = open_tun(args.ns_a, args.tun_a)
    b = open_tun(args.ns_b, args.tun_b)
    peer = {a: b, b: a}
    delay = args.delay_ms / 1000.0
    queue = []  # (due, seq, fd to write, packet): seq keeps the order of equal due times
    seq = 0
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, fd, packet = heapq.heappop(queue)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # the receiving interface is down: the packet is lost, as on a wire
        timeout = max(queue[0][0] - time.monotonic(), 0) if queue else 1.0
        ready, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                seq += 1
                heapq.heappush(queue, (now + delay, seq, peer[fd], packet))


if __name__ == "__main__":
    main()
