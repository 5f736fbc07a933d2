#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/seeds/<target>/<name>.

Cut from the Kitex captures (../shared/captures, the client-to-server side of a connection)
and hand-made inputs for paths the captures do not reach. Rerun after changing it; the files
are committed, so CI needs neither this script nor the captures.

    python3 fuzz/seeds/make_seeds.py [CAPTURES]

The ttstream_conn target reads structure-aware input (frame choices decoded with `arbitrary`),
so its seeds are not written here: they are inputs the fuzzer itself kept in a long run, the 24
largest of a `-set_cover_merge=1` of its corpus (fuzz/seeds/ttstream_conn/kept-*).
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "captures")


def capture(scenario, conn=0):
    with open(os.path.join(CAPTURES, scenario, f"conn{conn}.c2s.bin"), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4


def envelope(method, seq, mtype=CALL):
    m = method.encode()
    return struct.pack(">Ii", 0x80010000 | mtype, len(m)) + m + struct.pack(">i", seq)


def thrift_call(method, seq, mtype=CALL, text=b"hi"):
    # args struct: field 1 (struct) { field 1 (string) text }
    args = b"\x0c\x00\x01" + b"\x0b\x00\x01" + struct.pack(">i", len(text)) + text + b"\x00" + b"\x00"
    return envelope(method, seq, mtype) + args


def ttheader(seq, payload, flags=0, str_kvs=(), framed=True):
    header = b"\x00\x00"  # protocol id 0 (binary), no transforms
    if str_kvs:
        header += b"\x01" + struct.pack(">H", len(str_kvs))
        for k, v in str_kvs:
            header += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    header += b"\x00" * (-len(header) % 4)
    if framed:
        payload = struct.pack(">I", len(payload)) + payload
    rest = struct.pack(">HHIH", 0x1000, flags, seq, len(header) // 4) + header + payload
    return struct.pack(">I", len(rest)) + rest


def framed(msg):
    return struct.pack(">I", len(msg)) + msg


def mesh(msg, kvs=((b"isn", b"EchoService"),)):
    body = struct.pack(">H", len(kvs))
    for k, v in kvs:
        body += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return struct.pack(">HH", 0xFFAF, len(body)) + body + msg


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# Ping-pong connections: captures, then hand-made paths.
pingpong = {
    "ttheader-unary": capture("ttheader-unary"),
    "ttheader-unframed": capture("ttheader-unframed-unary"),
    "ttheader-mux": capture("ttheader-mux-unary"),
    "framed-unary": capture("framed-unary"),
    "buffered-unary": capture("buffered-unary"),
    "pb-unary": capture("pb-unary"),
    # Mux requests that sleep, past the in-flight limit of 4.
    "mux-sleep": b"".join(ttheader(i, thrift_call("Sleep300", i), flags=1) for i in range(1, 8)),
    # Plain requests one after another, a oneway among them.
    "framed-oneway-then-call": framed(thrift_call("Echo", 1, ONEWAY)) + framed(thrift_call("EchoFail", 2)),
    # A reply where a request belongs: answered with an exception, then closed.
    "ttheader-reply-type": ttheader(5, thrift_call("Echo", 5, REPLY), str_kvs=((b"isn", b"EchoService"),)),
    "mesh-framed": mesh(framed(thrift_call("EchoBizError", 3))),
    "mesh-buffered": mesh(thrift_call("Echo", 4)),
    # A frame claiming 1 GiB: refused from its first bytes.
    "ttheader-huge": struct.pack(">IHHIH", 1 << 30, 0x1000, 0, 1, 1) + b"\x00" * 4,
    # A truncated request: the client closes mid-frame.
    "framed-truncated": framed(thrift_call("Echo", 9))[:-5],
}
for name, data in pingpong.items():
    write("pingpong_conn", name, data)

# HTTP/2 connections: the captured gRPC callers (preface included), and a few frame runs
# after the handshake the target writes itself.
for scenario, conn in [
    ("grpc-thrift-unary", 0),
    ("grpc-thrift-bidi", 0),
    ("grpc-thrift-bidi-cancel", 0),
    ("grpc-pb-unary-multi", 0),
    ("grpc-thrift-echofail", 0),
]:
    write("h2_conn", scenario, capture(scenario, conn))
write("h2_conn", "ping-window-update-goaway",
      h2frame(6, 0, 0, b"\x00" * 8) + h2frame(8, 0, 0, struct.pack(">I", 1 << 20))
      + h2frame(7, 0, 0, struct.pack(">II", 0, 0)))
write("h2_conn", "rst-unknown-stream", h2frame(3, 0, 1, struct.pack(">I", 8)) + h2frame(0, 1, 3, b"x"))

# Decoder targets: captures of each family, client and server side.
decoders = {
    "sniff": [("ttheader-unary", "c2s"), ("framed-unary", "c2s"), ("buffered-unary", "c2s"),
              ("ttstream-bidi", "c2s"), ("grpc-thrift-unary", "c2s"), ("pb-unary", "c2s")],
    "thrift": [("buffered-unary", "c2s"), ("buffered-echofail", "s2c")],
    "framed": [("framed-unary", "c2s"), ("framed-echofail", "s2c"), ("buffered-unary", "c2s")],
    "ttheader": [("ttheader-unary", "c2s"), ("ttheader-mux-unary", "s2c"), ("pb-echofail", "s2c"),
                 ("ttheader-unframed-unary", "c2s")],
    "ttstream": [("ttstream-bidi", "c2s"), ("ttstream-bidi-cancel", "c2s"), ("ttstream-bidi-error", "s2c"),
                 ("ttstream-server", "s2c")],
    "grpc": [],
    "h2wire": [("grpc-thrift-unary", "c2s"), ("grpc-thrift-bidi-error", "s2c"), ("grpc-pb-unary", "s2c")],
}
for target, files in decoders.items():
    for scenario, side in files:
        with open(os.path.join(CAPTURES, scenario, f"conn0.{side}.bin"), "rb") as f:
            write(target, f"{scenario}.{side}", f.read())
write("thrift", "exception", envelope("Echo", 1, EXCEPTION)
      + b"\x0b\x00\x01\x00\x00\x00\x04oops\x08\x00\x02\x00\x00\x00\x06\x00")
write("framed", "mesh", mesh(framed(thrift_call("Echo", 3))))
write("grpc", "message", b"\x00\x00\x00\x00\x05hello")
write("grpc", "timeout", b"250m")
write("grpc", "path", b"/EchoService/Echo")
write("grpc", "content-type", b"application/grpc+thrift")
