#!/usr/bin/env python3
"""An HTTP/1.1 app for bulk transfers through the mesh (Python's standard http.server).

  POST /upload        reads the whole body (Content-Length or chunked) and answers its length
                      and SHA-256 as JSON: {"bytes": N, "sha256": "..."}.
  GET /download?size=N[&seed=S]
                      streams N bytes of a deterministic pattern (pattern(N, S) below, the
                      same as bulk_client.py's) with Content-Length.

Prints `READY port=NNNN` once listening.
"""

import argparse
import hashlib
import http.server
import json
import socketserver
import sys
import urllib.parse

CHUNK = 256 * 1024


def block(seed):
    """The 256 KiB block the pattern repeats: every byte depends on the seed and its offset."""
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(CHUNK))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the test prints what matters
        pass

    def do_POST(self):
        if self.path != "/upload":
            self.send_error(404)
            return
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        raise ConnectionError("body cut short")
                    digest.update(data)
                    total += len(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, CHUNK))
                if not data:
                    raise ConnectionError("body cut short")
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        body = json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/download":
            self.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)
        size = int(query.get("size", ["0"])[0])
        seed = int(query.get("seed", ["1"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        data = block(seed)
        remaining = size
        while remaining:
            n = min(remaining, CHUNK)
            self.wfile.write(data[:n])
            remaining -= n


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = Server((args.host, args.port), Handler)
    print(f"READY port={server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
