#!/usr/bin/env python3
"""A real gRPC client (grpcio) for the end-to-end tests: the caller of a service VIP.

Runs one scenario against a server speaking grpc_server.py's strait.peers.Echo (and the
standard health service), prints one line of JSON and exits 0 when every check held, 1 when
one did not (the JSON says which, under "error").

Scenarios:
  health   grpc.health.v1 Check("") answers SERVING.
  unary    echo of random bytes; x-echo-* request metadata comes back in the initial metadata,
           x-echo-trailer in the trailers.
  stream   ServerStream sends --messages copies of the request; every one arrives intact.
  bidi     BidiStream echoes --messages messages in order.
  status   Fail ends with --code and --message exactly (status and message crossed the path).
  load     --count unary calls, --concurrency at a time; counts failures by status code.

--authority sets the :authority a sidecar routes on (e.g. a service name when --target is a
VIP); --expect-server checks the x-server-name the answering server sent.
"""

import argparse
import json
import os
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "/strait.peers.Echo/"


def _identity(data):
    return data


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def unary_call(channel):
    return channel.unary_unary(
        SERVICE + "Unary", request_serializer=_identity, response_deserializer=_identity
    )


def check_server(args, initial, result):
    meta = dict(initial)
    result["server"] = meta.get("x-server-name")
    result["peer_seen_by_server"] = meta.get("x-peer")
    if args.expect_server is not None:
        check(
            result["server"] == args.expect_server,
            f"answered by {result['server']!r}, expected {args.expect_server!r}",
        )
    return meta


def scenario_health(channel, args, result):
    stub = health_pb2_grpc.HealthStub(channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    result["status"] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    check(answer.status == health_pb2.HealthCheckResponse.SERVING, f"health is {result['status']}")


def scenario_unary(channel, args, result):
    payload = os.urandom(args.size)
    token = os.urandom(8).hex()
    metadata = [("x-echo-token", token), ("x-echo-bin", payload[:32])]
    response, call = unary_call(channel).with_call(
        payload, metadata=metadata, timeout=args.timeout
    )
    meta = check_server(args, call.initial_metadata(), result)
    trailers = dict(call.trailing_metadata())
    result["bytes"] = len(response)
    result["trailers"] = {k: v for k, v in trailers.items() if isinstance(v, str)}
    check(response == payload, "response bytes differ from the request")
    check(meta.get("x-echo-token") == token, "x-echo-token did not come back")
    check(meta.get("x-echo-bin") == payload[:32], "binary x-echo-bin did not come back")
    check("x-echo-trailer" in trailers, "no x-echo-trailer in the trailers")
    check(trailers.get("x-request-count") == "1", "x-request-count trailer missing or wrong")


def scenario_stream(channel, args, result):
    payload = os.urandom(args.size)
    call = channel.unary_stream(
        SERVICE + "ServerStream", request_serializer=_identity, response_deserializer=_identity
    )(payload, metadata=[("x-stream-count", str(args.messages))], timeout=args.timeout)
    received = 0
    for message in call:
        check(message == payload, f"message {received} differs from the request")
        received += 1
    check_server(args, call.initial_metadata(), result)
    result["messages"] = received
    check(received == args.messages, f"received {received} of {args.messages} messages")
    check("x-echo-trailer" in dict(call.trailing_metadata()), "no x-echo-trailer")


def scenario_bidi(channel, args, result):
    sent = [os.urandom(args.size) for _ in range(args.messages)]
    call = channel.stream_stream(
        SERVICE + "BidiStream", request_serializer=_identity, response_deserializer=_identity
    )(iter(sent), timeout=args.timeout)
    received = list(call)
    check_server(args, call.initial_metadata(), result)
    result["messages"] = len(received)
    check(received == sent, f"echoed {len(received)} messages, not the {len(sent)} sent in order")
    trailers = dict(call.trailing_metadata())
    check(trailers.get("x-request-count") == str(len(sent)), "x-request-count trailer wrong")


def scenario_status(channel, args, result):
    expected = next(
        (c for c in grpc.StatusCode if args.code.upper() in (c.name, str(c.value[0]))), None
    )
    check(expected not in (None, grpc.StatusCode.OK), f"--code {args.code} names no error code")
    metadata = [
        ("x-status-code", expected.name),
        ("x-status-message-bin", args.message.encode("utf-8")),
    ]
    call = channel.unary_unary(
        SERVICE + "Fail", request_serializer=_identity, response_deserializer=_identity
    )
    try:
        call(b"fail", metadata=metadata, timeout=args.timeout)
    except grpc.RpcError as err:
        result["code"] = err.code().name
        result["message"] = err.details()
        check_server(args, err.initial_metadata(), result)
        check(err.code() == expected, f"code {err.code().name}, expected {expected.name}")
        check(err.details() == args.message, f"message {err.details()!r}, expected {args.message!r}")
        check("x-echo-trailer" in dict(err.trailing_metadata()), "no x-echo-trailer")
        return
    raise Failed("the call succeeded; expected an error status")


def scenario_load(channel, args, result):
    call = unary_call(channel)
    payload = os.urandom(args.size)
    codes, servers, latencies = {}, {}, []
    lock = threading.Lock()
    slots = threading.Semaphore(args.concurrency)
    done = threading.Event()
    remaining = [args.count]

    def finished(future, started):
        elapsed = time.monotonic() - started
        code = future.code()
        with lock:
            codes[code.name] = codes.get(code.name, 0) + 1
            if code is grpc.StatusCode.OK:
                latencies.append(elapsed)
                name = dict(future.initial_metadata() or ()).get("x-server-name")
                servers[name] = servers.get(name, 0) + 1
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
        slots.release()

    started_all = time.monotonic()
    for _ in range(args.count):
        slots.acquire()
        started = time.monotonic()
        future = call.future(payload, timeout=args.timeout)
        future.add_done_callback(lambda f, s=started: finished(f, s))
    done.wait()
    elapsed = time.monotonic() - started_all
    latencies.sort()
    ok = codes.get("OK", 0)
    result.update(
        calls=args.count,
        ok_calls=ok,
        codes=codes,
        servers=servers,
        seconds=round(elapsed, 3),
        calls_per_second=round(args.count / elapsed, 1),
        latency_ms={
            q: round(percentile(latencies, v) * 1000, 3) if latencies else None
            for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
    )
    failures = args.count - ok
    check(failures <= args.max_failures, f"{failures} calls failed ({args.max_failures} allowed)")


SCENARIOS = {
    "health": scenario_health,
    "unary": scenario_unary,
    "stream": scenario_stream,
    "bidi": scenario_bidi,
    "status": scenario_status,
    "load": scenario_load,
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", required=True, help="HOST:PORT (an IP such as a VIP is fine)")
    parser.add_argument("--authority", help=":authority to send (default: --target)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--expect-server", help="fail unless x-server-name is this")
    parser.add_argument("--service", default="", help="health: the service to check")
    parser.add_argument("--size", type=int, default=1024, help="request payload bytes")
    parser.add_argument("--messages", type=int, default=5, help="stream/bidi: messages")
    parser.add_argument("--code", default="NOT_FOUND", help="status: the code (name or number)")
    parser.add_argument("--message", default="no such thing: 🦀", help="status: its message")
    parser.add_argument("--count", type=int, default=1000, help="load: calls")
    parser.add_argument("--concurrency", type=int, default=16, help="load: calls in flight")
    parser.add_argument("--max-failures", type=int, default=0, help="load: failures allowed")
    args = parser.parse_args()

    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        # No proxy from the environment: tests talk to loopback and the mesh only.
        ("grpc.enable_http_proxy", 0),
    ]
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    result = {"scenario": args.scenario, "target": args.target, "ok": False}
    started = time.monotonic()
    try:
        with grpc.insecure_channel(args.target, options=options) as channel:
            SCENARIOS[args.scenario](channel, args, result)
        result["ok"] = True
    except Failed as err:
        result["error"] = str(err)
    except grpc.RpcError as err:
        result["error"] = f"{err.code().name}: {err.details()}"
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    sys.exit(0 if "error" not in result else 1)


if __name__ == "__main__":
    main()
