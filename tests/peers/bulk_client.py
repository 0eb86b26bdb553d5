#!/usr/bin/env python3
"""Bulk transfers through the mesh, checksummed: the client half of bulk_server.py.

  upload --target HOST:PORT --size N     streams N pattern bytes as a POST body (chunked: the
                                         sidecars must stream it, not buffer it) and checks the
                                         server's byte count and SHA-256.
  download --target HOST:PORT --size N   reads N bytes and checks them against the pattern.

Prints one line of JSON ({"ok": true, "bytes": N, "seconds": S, "mb_per_s": R}) and exits 0,
or {"ok": false, "error": ...} and exits 1.
"""

import argparse
import hashlib
import http.client
import json
import sys
import time

from bulk_server import CHUNK, block


def pattern(size, seed):
    data = block(seed)
    remaining = size
    while remaining:
        n = min(remaining, CHUNK)
        yield data[:n]
        remaining -= n


def upload(conn, size, seed):
    digest = hashlib.sha256()

    def body():
        for chunk in pattern(size, seed):
            digest.update(chunk)
            yield chunk

    conn.request("POST", "/upload", body=body(), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    text = response.read()
    if response.status != 200:
        raise RuntimeError(f"upload: HTTP {response.status}: {text[:200]!r}")
    answer = json.loads(text)
    if answer["bytes"] != size or answer["sha256"] != digest.hexdigest():
        raise RuntimeError(f"upload: the server got {answer}, sent {size} bytes {digest.hexdigest()}")


def download(conn, size, seed):
    conn.request("GET", f"/download?size={size}&seed={seed}")
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"download: HTTP {response.status}: {response.read()[:200]!r}")
    expected = hashlib.sha256()
    for chunk in pattern(size, seed):
        expected.update(chunk)
    got = hashlib.sha256()
    total = 0
    while True:
        data = response.read(CHUNK)
        if not data:
            break
        got.update(data)
        total += len(data)
    if total != size or got.hexdigest() != expected.hexdigest():
        raise RuntimeError(f"download: got {total} bytes {got.hexdigest()}, expected {size}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("direction", choices=["upload", "download"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    start = time.monotonic()
    try:
        (upload if args.direction == "upload" else download)(conn, args.size, args.seed)
    except Exception as err:  # noqa: BLE001 - any failure is the test's answer
        print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1
    seconds = time.monotonic() - start
    print(json.dumps({"ok": True, "bytes": args.size, "seconds": round(seconds, 2),
                      "mb_per_s": round(args.size / seconds / 1e6, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
