#!/usr/bin/env python3
"""A real WebSocket client (the `websockets` library) for the end-to-end tests.

Against an echo server (ws_echo_server.py), on one connection:
  1. sends --count small text messages and checks each echo, in order;
  2. sends one --binary-size binary message (1 MiB by default) and checks it byte for byte;
  3. stays idle --idle seconds (no pings), then sends again and checks the echo, proving the
     connection outlived the idle time.
Prints one line of JSON and exits 0, or 1 with "error" saying what went wrong.

--host-header NAME sends `Host: NAME` while connecting to the URL's address, for a URL whose
host is an IP (a service VIP) when the route is chosen by name. --expect-server checks the
X-Server-Name the server's handshake answer carried, --expect-host the Host header the server
saw (X-Request-Host).
"""

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


async def run(args, result):
    url = urlsplit(args.url)
    check(url.scheme == "ws", f"only ws:// URLs are supported, not {url.scheme}://")
    check(url.hostname is not None, "the URL has no host")
    uri, dial = args.url, {}
    if args.host_header:
        # The Host header comes from the URI; the TCP connection goes to the URL's address.
        uri = urlunsplit(url._replace(netloc=args.host_header))
        dial = {"host": url.hostname, "port": url.port or 80}

    started = time.monotonic()
    async with connect(
        uri,
        max_size=args.binary_size + 1024,
        compression=None,
        proxy=None,
        ping_interval=None,
        open_timeout=args.timeout,
        **dial,
    ) as ws:
        result["handshake_ms"] = round((time.monotonic() - started) * 1000, 1)
        result["server"] = ws.response.headers.get("X-Server-Name")
        result["path_seen_by_server"] = ws.response.headers.get("X-Request-Path")
        result["host_seen_by_server"] = ws.response.headers.get("X-Request-Host")
        if args.expect_server is not None:
            check(
                result["server"] == args.expect_server,
                f"answered by {result['server']!r}, expected {args.expect_server!r}",
            )
        if args.expect_host is not None:
            check(
                result["host_seen_by_server"] == args.expect_host,
                f"server saw Host {result['host_seen_by_server']!r}, expected {args.expect_host!r}",
            )

        async def roundtrip(message, what):
            await ws.send(message)
            echo = await asyncio.wait_for(ws.recv(), args.timeout)
            check(type(echo) is type(message), f"{what}: echo came back as {type(echo).__name__}")
            check(echo == message, f"{what}: echo differs from what was sent")

        started = time.monotonic()
        for i in range(args.count):
            await roundtrip(f"message {i} {os.urandom(4).hex()}", f"text message {i}")
        result["text_messages"] = args.count
        result["text_ms"] = round((time.monotonic() - started) * 1000, 1)

        started = time.monotonic()
        await roundtrip(os.urandom(args.binary_size), f"binary message of {args.binary_size} bytes")
        result["binary_bytes"] = args.binary_size
        result["binary_ms"] = round((time.monotonic() - started) * 1000, 1)

        await asyncio.sleep(args.idle)
        await roundtrip("after idle", f"the message after {args.idle} s idle")
        await roundtrip(os.urandom(1024), "the binary message after idle")
        result["idle_s"] = args.idle


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/PATH (HOST may be an IP)")
    parser.add_argument("--host-header", help="Host header to send instead of the URL's")
    parser.add_argument("--count", type=int, default=1000, help="small text messages")
    parser.add_argument("--binary-size", type=int, default=1024 * 1024)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before the last")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--expect-server", help="fail unless X-Server-Name is this")
    parser.add_argument("--expect-host", help="fail unless the server saw this Host header")
    args = parser.parse_args()

    result = {"url": args.url, "ok": False}
    started = time.monotonic()
    try:
        asyncio.run(run(args, result))
        result["ok"] = True
    except Failed as err:
        result["error"] = str(err)
    except Exception as err:  # any library or socket error is the answer to report
        result["error"] = f"{type(err).__name__}: {err}"
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
