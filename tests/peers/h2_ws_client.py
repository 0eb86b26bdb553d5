#!/usr/bin/env python3
"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) with libraries nobody here wrote: `h2` speaks
HTTP/2 (prior knowledge, no TLS: an app calling its sidecar's VIP) and `wsproto` the WebSocket
frames on the CONNECT stream.

Against an echo server (ws_echo_server.py, behind however many proxies), on one stream:
  1. waits for the server's SETTINGS_ENABLE_CONNECT_PROTOCOL, then sends CONNECT with
     `:protocol websocket` and expects 200 (not 101: HTTP/2 has no 101);
  2. sends --count small text messages and checks each echo, in order;
  3. sends one --binary-size binary message (1 MiB by default, many DATA frames under HTTP/2 flow
     control) and checks it byte for byte;
  4. stays idle --idle seconds, then sends again and checks the echo.
Prints one line of JSON and exits 0, or 1 with "error" saying what went wrong. --expect-server
checks the X-Server-Name the echo server's handshake answer carried.
"""

import argparse
import json
import os
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class ConnectStream:
    """One extended CONNECT stream: bytes in and out, under HTTP/2 flow control."""

    def __init__(self, host, port, path, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self.flush()
        self.headers = None
        self.received = bytearray()
        self.ended = None
        self.settings_seen = False
        while not self.settings_seen:
            self.pump()
        check(
            self.h2.remote_settings.enable_connect_protocol == 1,
            "the server did not enable extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)",
        )
        self.id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            self.id,
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"{host}:{port}"),
                ("sec-websocket-version", "13"),
            ],
        )
        self.flush()
        while self.headers is None:
            self.pump()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self):
        """Reads what the server sent and handles it."""
        check(self.ended is None, f"the stream ended: {self.ended}")
        data = self.sock.recv(65536)
        check(data, "the server closed the connection")
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_seen = True
            elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == self.id:
                self.headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == self.id:
                self.received += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.id:
                self.ended = "END_STREAM from the server"
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == self.id:
                self.ended = f"RST_STREAM {event.error_code!r}"
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.ended = f"GOAWAY {event.error_code!r}"
        self.flush()

    def send(self, data):
        view = memoryview(data)
        while view:
            window = self.h2.local_flow_control_window(self.id)
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size == 0:
                self.pump()  # wait for a WINDOW_UPDATE
                continue
            self.h2.send_data(self.id, view[:size].tobytes())
            self.flush()
            view = view[size:]

    def take(self):
        data = bytes(self.received)
        self.received.clear()
        return data


def run(args, result):
    host, _, port = args.addr.rpartition(":")
    started = time.monotonic()
    stream = ConnectStream(host, int(port), args.path, args.timeout)
    status = stream.headers.get(":status")
    check(status == "200", f"CONNECT answered {status}: {stream.headers}")
    result["handshake_ms"] = round((time.monotonic() - started) * 1000, 1)
    result["server"] = stream.headers.get("x-server-name")
    if args.expect_server is not None:
        check(
            result["server"] == args.expect_server,
            f"answered by {result['server']!r}, expected {args.expect_server!r}",
        )
    ws = Connection(ConnectionType.CLIENT)

    def receive():
        parts = []
        while True:
            for event in ws.events():
                if isinstance(event, Ping):
                    stream.send(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise Failed(f"the server closed the WebSocket: {event.code} {event.reason}")
                elif isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                        return joined
            stream.pump()
            ws.receive_data(stream.take())

    def roundtrip(message, what):
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        stream.send(ws.send(event))
        echo = receive()
        check(type(echo) is type(message), f"{what}: echo came back as {type(echo).__name__}")
        check(echo == message, f"{what}: echo differs from what was sent")

    started = time.monotonic()
    for i in range(args.count):
        roundtrip(f"message {i} {os.urandom(4).hex()}", f"text message {i}")
    result["text_messages"] = args.count
    result["text_ms"] = round((time.monotonic() - started) * 1000, 1)
    roundtrip(os.urandom(args.binary_size), "binary message")
    result["binary_bytes"] = args.binary_size
    time.sleep(args.idle)
    roundtrip("after the idle pause", "message after the idle pause")
    result["idle_s"] = args.idle
    stream.send(ws.send(CloseConnection(code=1000)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT to speak HTTP/2 to")
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--binary-size", type=int, default=1 << 20)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--expect-server")
    args = parser.parse_args()
    result = {"addr": args.addr}
    try:
        run(args, result)
    except (Failed, OSError, h2.exceptions.ProtocolError) as err:
        result["error"] = f"{type(err).__name__}: {err}"
        print(json.dumps(result), flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
