#!/usr/bin/env python3
"""An OTLP/gRPC trace receiver on loopback, built on the official OpenTelemetry protocol
definitions (the `opentelemetry-proto` package) and grpcio, for the span export tests.

Prints `listening <port>` once it serves, then one line per span received, fields separated
by tabs (tabs and newlines inside values become spaces):

    span  NAME  TRACE_ID  SPAN_ID  PARENT_SPAN_ID  KIND  STATUS_CODE  STATUS_MESSAGE  SERVICE_NAME  KEY=VALUE ...

Ids are lower-case hex (the parent id is empty for a root span); KIND and STATUS_CODE are the
protocol's enum numbers; SERVICE_NAME is the resource's `service.name`. Runs until its
standard input closes (or it is killed).

Usage: otlp_receiver.py [--port PORT]
"""

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def clean(value):
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind in ("array_value", "kvlist_value"):
        return clean(getattr(v, kind))
    return clean(getattr(v, kind))


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            service = attributes(rs.resource.attributes).get("service.name", "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    fields = [
                        "span",
                        clean(span.name),
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        str(span.kind),
                        str(span.status.code),
                        clean(span.status.message),
                        clean(service),
                    ]
                    fields += [f"{k}={v}" for k, v in attributes(span.attributes).items()]
                    lines.append("\t".join(fields))
        with LOCK:
            for line in lines:
                print(line, flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        print("cannot bind a loopback port", file=sys.stderr, flush=True)
        return 1
    server.start()
    with LOCK:
        print(f"listening {port}", flush=True)
    # Until the test closes our standard input (or goes away).
    sys.stdin.read()
    server.stop(grace=None).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
