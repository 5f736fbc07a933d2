#!/usr/bin/env python3
"""A grpcio EchoService server for the `sluice call` tests, from tests/idl/tools.proto.

The .proto is compiled when the script starts (grpc_tools.protoc, into a temporary directory),
so the server uses protobuf's own generated message classes: an encoder and decoder that share
nothing with Sluice's.

Prints `listening 127.0.0.1:<port>` once serving, then serves until stdin closes.

Methods:
  Echo        message "grpcio: <message>", tenant from the `rpc-persist-tenant` metadata (Kitex's
              gRPC form of the persistent metainfo key TENANT) or else the request's, tier and
              delta echoed; sets the trailer `x-served-by: grpcio`.
  EchoFail    aborts with INVALID_ARGUMENT "grpcio echo: EchoFail always fails".
  EchoBidi    one reply per request, "<message>!".
  EchoClient  one reply, the requests' messages joined by ",".
  EchoServer  three replies, "<message> 0" .. "<message> 2".
"""

import argparse
import os
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="sluice-grpcio-echo-")
    rc = protoc.main([
        "protoc",
        f"-I{args.proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(args.proto_dir, "tools.proto"),
        os.path.join(args.proto_dir, "tier.proto"),
    ])
    if rc != 0:
        print(f"protoc failed: {rc}", file=sys.stderr)
        sys.exit(1)
    sys.path.insert(0, out)
    import tools_pb2
    import tools_pb2_grpc

    class Echo(tools_pb2_grpc.EchoServiceServicer):
        def Echo(self, req, ctx):
            md = dict(ctx.invocation_metadata())
            ctx.set_trailing_metadata((("x-served-by", "grpcio"),))
            return tools_pb2.EchoResponse(
                message="grpcio: " + req.message,
                tenant=md.get("rpc-persist-tenant", req.tenant),
                tier=req.tier,
                delta=req.delta,
            )

        def EchoFail(self, req, ctx):
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "grpcio echo: EchoFail always fails")

        def EchoBidi(self, it, ctx):
            for r in it:
                yield tools_pb2.EchoResponse(message=r.message + "!")

        def EchoClient(self, it, ctx):
            return tools_pb2.EchoResponse(message=",".join(r.message for r in it))

        def EchoServer(self, req, ctx):
            for i in range(3):
                yield tools_pb2.EchoResponse(message=f"{req.message} {i}")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    tools_pb2_grpc.add_EchoServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening 127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
