#!/usr/bin/env python3
"""A real WebSocket echo server (the `websockets` library) for the end-to-end tests.

Accepts a WebSocket upgrade on any path and sends every message back unchanged, text as text
and binary as binary; messages up to --max-size bytes (16 MiB by default, so 1 MiB payloads
pass). The handshake response carries `X-Server-Name: NAME`, `X-Request-Path` and `X-Request-Host`, so a
test can tell which server answered and which path and Host header arrived. No permessage-deflate: the bytes on the wire
are the bytes sent, which is what a proxy in the middle must carry.

Prints `READY port=N name=NAME` (flushed) once it accepts connections; --port 0 takes a free
port.
"""

import argparse
import asyncio
import signal

from websockets.asyncio.server import serve


async def echo(connection):
    async for message in connection:
        await connection.send(message)


async def run(args):
    def label(connection, request, response):
        response.headers["X-Server-Name"] = args.name
        response.headers["X-Request-Path"] = request.path
        response.headers["X-Request-Host"] = request.headers.get("Host", "")
        return response

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        echo,
        args.host,
        args.port,
        max_size=args.max_size,
        compression=None,
        process_response=label,
        # The client side decides about idling; the server does not close idle connections.
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY port={port} name={args.name}", flush=True)
        await stop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="ws-peer", help="sent as X-Server-Name")
    parser.add_argument("--max-size", type=int, default=16 * 1024 * 1024)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
