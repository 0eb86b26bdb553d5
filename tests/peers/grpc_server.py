#!/usr/bin/env python3
"""A real gRPC server (grpcio) for the end-to-end tests: the app behind a sidecar.

Serves, on plaintext HTTP/2:

- grpc.health.v1.Health (the standard health service): "" and "strait.peers.Echo" SERVING.
- strait.peers.Echo, with generic handlers (bytes in, bytes out, so no protoc is needed):
  - Unary: answers the request bytes unchanged.
  - ServerStream: answers `x-stream-count` messages (default 3), each the request bytes.
  - BidiStream: answers each request message as it arrives.
  - Fail: ends with the status code named in `x-status-code` (a name such as NOT_FOUND or a
    number; default INTERNAL) and the message in `x-status-message` (ASCII) or, as UTF-8,
    `x-status-message-bin` (metadata values are ASCII; a status message need not be).

Every Echo call sends, in initial metadata, `x-server-name: NAME` (the --name flag), `x-peer`
(the caller's address as this server saw it) and every request header whose name starts with
`x-echo-` unchanged (binary `-bin` ones too); in trailing metadata, `x-echo-trailer: NAME` and
`x-request-count` (messages received). A test can so check that metadata, trailers, status
codes and messages travel through the mesh both ways.

Prints `READY port=N name=NAME` (flushed) once it accepts calls; --port 0 takes a free port.
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "strait.peers.Echo"


def _identity(data):
    return data


def _status_code(text):
    """Maps `NOT_FOUND`, `not_found` or `5` to a grpc.StatusCode; None if unknown."""
    text = text.strip()
    for code in grpc.StatusCode:
        if text.upper() == code.name or (text.isdigit() and int(text) == code.value[0]):
            return code
    return None


class Echo:
    def __init__(self, name):
        self.name = name

    def _start(self, context):
        """Sends the initial metadata every method shares."""
        echoed = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-")]
        context.send_initial_metadata(
            [("x-server-name", self.name), ("x-peer", context.peer())] + echoed
        )

    def _finish(self, context, count):
        context.set_trailing_metadata(
            [("x-echo-trailer", self.name), ("x-request-count", str(count))]
        )

    def unary(self, request, context):
        self._start(context)
        self._finish(context, 1)
        return request

    def server_stream(self, request, context):
        self._start(context)
        meta = dict(context.invocation_metadata())
        try:
            count = int(meta.get("x-stream-count", "3"))
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "x-stream-count is not a number")
        self._finish(context, 1)
        for _ in range(count):
            yield request

    def bidi_stream(self, requests, context):
        self._start(context)
        count = 0
        for request in requests:
            count += 1
            yield request
        self._finish(context, count)

    def fail(self, request, context):
        self._start(context)
        meta = dict(context.invocation_metadata())
        code = _status_code(meta.get("x-status-code", "INTERNAL"))
        if code is None or code is grpc.StatusCode.OK:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "x-status-code names no error code")
        self._finish(context, 1)
        message = meta.get("x-status-message", "failed on request")
        if "x-status-message-bin" in meta:
            message = meta["x-status-message-bin"].decode("utf-8", "replace")
        context.abort(code, message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="grpc-peer", help="sent as x-server-name")
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()

    echo = Echo(args.name)
    bytes_io = dict(request_deserializer=_identity, response_serializer=_identity)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, **bytes_io),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, **bytes_io),
        "BidiStream": grpc.stream_stream_rpc_method_handler(echo.bidi_stream, **bytes_io),
        "Fail": grpc.unary_unary_rpc_method_handler(echo.fail, **bytes_io),
    }
    # Messages up to 16 MiB both ways, so tests can send large payloads through the mesh.
    limit = 16 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_servicer = health.HealthServicer()
    for service in ("", SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    print(f"READY port={port} name={args.name}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
