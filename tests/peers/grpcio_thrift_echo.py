#!/usr/bin/env python3
"""A grpcio server for thrift-over-gRPC streams, with raw-bytes generic handlers (no generated
code): the TTStream-to-gRPC conversion tests send it `application/grpc+thrift` streams through
Sluice.

Prints `listening 127.0.0.1:<port>` once serving, then serves until stdin closes. Every method
of `/EchoService/`:

  Echo, EchoBidi  each message echoed as it came (a bare thrift struct);
  EchoClient      the last message, once the caller half-closed;
  EchoServer      each message echoed twice;
  EchoBidiFail    the first message echoed, then status INTERNAL "grpcio: bidi failure";
  EchoWait        nothing until the caller cancels; then prints `cancelled EchoWait` on stdout.

It also sends back, as trailing metadata, `x-seen-tenant` with the `rpc-persist-tenant` the call
carried, `x-time-remaining` (seconds left of its `grpc-timeout`, or `none`), and `biz-status: 0`.
"""

import sys
import threading
from concurrent import futures

import grpc


def tenant(ctx):
    return dict(ctx.invocation_metadata()).get("rpc-persist-tenant", "")


def trailers(ctx):
    left = ctx.time_remaining()
    ctx.set_trailing_metadata((
        ("x-seen-tenant", tenant(ctx)),
        ("biz-status", "0"),
        # Seconds left of the call's grpc-timeout when it arrived ("none" without one).
        ("x-time-remaining", "none" if left is None else f"{left:.3f}"),
    ))


def echo(it, ctx):
    trailers(ctx)
    for m in it:
        yield m


def client(it, ctx):
    trailers(ctx)
    last = b""
    for m in it:
        last = m
    return last


def server(req, ctx):
    trailers(ctx)
    yield req
    yield req


def fail(it, ctx):
    for m in it:
        yield m
        ctx.abort(grpc.StatusCode.INTERNAL, "grpcio: bidi failure")


def wait(it, ctx):
    done = threading.Event()

    def cancelled():
        print("cancelled EchoWait", flush=True)
        done.set()

    ctx.add_callback(cancelled)
    for _ in it:
        pass
    done.wait(30)
    return iter(())


def main():
    same = lambda b: b
    handlers = {
        "Echo": grpc.stream_stream_rpc_method_handler(echo, same, same),
        "EchoBidi": grpc.stream_stream_rpc_method_handler(echo, same, same),
        "EchoClient": grpc.stream_unary_rpc_method_handler(client, same, same),
        "EchoServer": grpc.unary_stream_rpc_method_handler(server, same, same),
        "EchoBidiFail": grpc.stream_stream_rpc_method_handler(fail, same, same),
        "EchoWait": grpc.stream_stream_rpc_method_handler(wait, same, same),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("EchoService", handlers),))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    print(f"listening 127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    srv.stop(0)


if __name__ == "__main__":
    main()
