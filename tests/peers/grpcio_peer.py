#!/usr/bin/env python3
"""grpcio (the Python gRPC implementation) as an independent peer on both sides of Sluice.

A grpcio client talks to the real `sluice` binary (a `cluster = "grpc"` listener), which
forwards to a grpcio server. No generated code: every method uses raw-bytes serializers
through grpcio's generic handler API.

Usage: grpcio_peer.py --sluice PATH_TO_SLUICE_BINARY
       grpcio_peer.py --sluice PATH --listener-cert F --listener-key F --client-ca F \
           --root-ca F --client-cert F --client-key F [--server-name NAME]

The second form runs the mutual-TLS checks: Sluice's listener has a certificate, asks for
client certificates of `--client-ca` (`tls_client_auth = "required"`), and the grpcio client
trusts `--root-ca` and presents `--client-cert`; a client without a certificate must fail.

Prints one `ok: ...` line per passing check, `FAIL: ...` per failing one, and exits non-zero
if any check failed.
"""

import argparse
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import grpc

SERVICE = "echo.EchoService"

# How long a single call may take before a check gives up on it.
CALL_TIMEOUT = 10.0

SERVER_STREAM_REPLIES = 5
CLIENT_STREAM_REQUESTS = 5
BIDI_MESSAGES = 10
CONCURRENT_CALLS = 100

TENANT_KEY = "x-tenant"
TENANT_SEEN_KEY = "x-tenant-seen"
SERVER_HEADER_KEY = "x-server-header"
SERVER_HEADER_VALUE = "grpcio-server"
SERVER_TRAILER_KEY = "x-server-trailer"
SERVER_TRAILER_VALUE = "done"
BIN_KEY = "trace-bin"
# Every byte value, including ones that are not valid UTF-8 or printable.
BIN_VALUE = bytes(range(256))
PROBE_KEY = "x-probe"
# The W3C spec's example trace context, and an invalid one (an all-zero parent id).
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_INVALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

FAIL_CODE = grpc.StatusCode.INVALID_ARGUMENT
FAIL_DETAILS = "payload rejected by the grpcio server"
FAIL_META_KEY = "x-fail-reason"
FAIL_META_VALUE = "on-purpose"

# The server side of `Slow` sleeps this long unless the call goes away first.
SLOW_SLEEP = 5.0
DEADLINE = 0.3


def metadata_dict(pairs):
    """Metadata (a sequence of (key, value) pairs) as a dict; the last value of a key wins."""
    return {k: v for k, v in (pairs or ())}


class Observations:
    """What the server saw, shared with the checks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.metadata = {}  # probe -> invocation metadata dict
        self.cancelled = {}  # probe -> threading.Event, set once the server sees the call end
        self.slow_remaining = {}  # probe -> time_remaining() when `Slow` started

    def record_metadata(self, probe, md):
        with self.lock:
            self.metadata[probe] = md

    def cancel_event(self, probe):
        with self.lock:
            return self.cancelled.setdefault(probe, threading.Event())


OBS = Observations()


# ---------------------------------------------------------------------------------------------
# Server


def probe_of(context):
    return metadata_dict(context.invocation_metadata()).get(PROBE_KEY)


def wait_inactive(context, limit):
    """Polls `context.is_active()` until it turns false or `limit` seconds pass."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not context.is_active():
            return True
        time.sleep(0.02)
    return not context.is_active()


def handle_echo(request, context):
    md = metadata_dict(context.invocation_metadata())
    probe = md.get(PROBE_KEY)
    if probe is not None:
        OBS.record_metadata(probe, md)
    initial = [(SERVER_HEADER_KEY, SERVER_HEADER_VALUE)]
    trailing = [(SERVER_TRAILER_KEY, SERVER_TRAILER_VALUE)]
    if TENANT_KEY in md:
        initial.append((TENANT_SEEN_KEY, md[TENANT_KEY]))
    if BIN_KEY in md:
        initial.append((BIN_KEY, md[BIN_KEY]))
        trailing.append((BIN_KEY, md[BIN_KEY]))
    context.send_initial_metadata(initial)
    context.set_trailing_metadata(trailing)
    return request


def handle_echo_server(request, context):
    for i in range(SERVER_STREAM_REPLIES):
        yield request + b"#" + str(i).encode()


def handle_echo_client(request_iterator, context):
    return b"".join(request_iterator)


def handle_echo_bidi(request_iterator, context):
    probe = probe_of(context)
    if probe is None:
        for message in request_iterator:
            yield message
        return
    # A cancellation probe: echo until the request stream stops, then report whether the call
    # was cancelled (the client never half-closes in this probe).
    event = OBS.cancel_event(probe)
    try:
        for message in request_iterator:
            yield message
    except grpc.RpcError:
        pass
    finally:
        if wait_inactive(context, 5.0):
            event.set()


def handle_echo_fail(request, context):
    context.set_trailing_metadata([(FAIL_META_KEY, FAIL_META_VALUE)])
    context.abort(FAIL_CODE, FAIL_DETAILS)


def handle_slow(request, context):
    probe = probe_of(context)
    event = OBS.cancel_event(probe) if probe is not None else threading.Event()
    with OBS.lock:
        OBS.slow_remaining[probe] = context.time_remaining()
    context.add_callback(event.set)
    end = time.monotonic() + SLOW_SLEEP
    while time.monotonic() < end:
        if not context.is_active():
            event.set()
            return b""
        time.sleep(0.02)
    return request


def start_server():
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(handle_echo),
        "EchoServer": grpc.unary_stream_rpc_method_handler(handle_echo_server),
        "EchoClient": grpc.stream_unary_rpc_method_handler(handle_echo_client),
        "EchoBidi": grpc.stream_stream_rpc_method_handler(handle_echo_bidi),
        "EchoFail": grpc.unary_unary_rpc_method_handler(handle_echo_fail),
        "Slow": grpc.unary_unary_rpc_method_handler(handle_slow),
    }
    server = grpc.server(
        ThreadPoolExecutor(max_workers=64),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        raise RuntimeError("grpcio server could not bind a loopback port")
    server.start()
    return server, port


# ---------------------------------------------------------------------------------------------
# Sluice


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SluiceProcess:
    def __init__(self, binary, downstream_port, workdir, listener_tls=""):
        self.port = free_port()
        self.config_path = os.path.join(workdir, "sluice.toml")
        self.stderr_path = os.path.join(workdir, "sluice.stderr")
        with open(self.config_path, "w") as f:
            f.write(
                f"""[[listeners]]
name = "grpc"
address = "127.0.0.1:{self.port}"
cluster = "grpc"
{listener_tls}
[[routes]]
service = "*"
downstream = "py"

[downstreams.py]
endpoints = ["127.0.0.1:{downstream_port}"]
"""
            )
        self.stderr = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [binary, "run", "--config", self.config_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
        )

    def wait_listening(self, limit=20.0):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sluice exited with {self.proc.returncode} before listening\n"
                    + self.stderr_text()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sluice did not start listening\n" + self.stderr_text())

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(cannot read sluice stderr: {e})"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stderr.close()


# ---------------------------------------------------------------------------------------------
# Client helpers


class Stubs:
    """Raw-bytes callables for every method on one channel."""

    def __init__(self, channel):
        path = f"/{SERVICE}/"
        self.echo = channel.unary_unary(path + "Echo")
        self.echo_server = channel.unary_stream(path + "EchoServer")
        self.echo_client = channel.stream_unary(path + "EchoClient")
        self.echo_bidi = channel.stream_stream(path + "EchoBidi")
        self.echo_fail = channel.unary_unary(path + "EchoFail")
        self.slow = channel.unary_unary(path + "Slow")


def describe(e):
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code()}: {e.details()!r}"
    return repr(e)


def call(what, fn, *args, **kwargs):
    """Runs one gRPC call, turning an unexpected RpcError into an assertion with context."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise AssertionError(f"{what}: unexpected gRPC error {describe(e)}") from None


# ---------------------------------------------------------------------------------------------
# Checks: each takes the stubs of one path and raises AssertionError on failure.


def check_unary(stubs, label):
    small = b"\x00\x01raw bytes\xff\xfe" + bytes(range(256))
    got = call(f"{label} unary", stubs.echo, small, timeout=CALL_TIMEOUT)
    assert got == small, f"{label}: unary echo returned {got[:40]!r}..., want {small[:40]!r}..."
    empty = call(f"{label} empty unary", stubs.echo, b"", timeout=CALL_TIMEOUT)
    assert empty == b"", f"{label}: empty unary echo returned {empty[:40]!r}"
    big = os.urandom(1024 * 1024)
    got = call(f"{label} 1 MiB unary", stubs.echo, big, timeout=CALL_TIMEOUT)
    assert len(got) == len(big), f"{label}: 1 MiB echo came back as {len(got)} bytes"
    assert got == big, f"{label}: 1 MiB echo came back with the same length but other bytes"
    return "unary echo of raw bytes (300 B, empty, 1 MiB)"


def check_server_stream(stubs, label):
    replies = call(
        f"{label} server stream",
        lambda: list(stubs.echo_server(b"ping", timeout=CALL_TIMEOUT)),
    )
    want = [b"ping#" + str(i).encode() for i in range(SERVER_STREAM_REPLIES)]
    assert replies == want, f"{label}: server stream replies {replies!r}, want {want!r}"
    return f"server streaming: 1 request -> {SERVER_STREAM_REPLIES} responses"


def check_client_stream(stubs, label):
    parts = [f"part{i};".encode() for i in range(CLIENT_STREAM_REQUESTS)]
    got = call(f"{label} client stream", stubs.echo_client, iter(parts), timeout=CALL_TIMEOUT)
    assert got == b"".join(parts), f"{label}: client stream reply {got!r}, want {b''.join(parts)!r}"
    return f"client streaming: {CLIENT_STREAM_REQUESTS} requests -> 1 concatenated response"


def check_bidi(stubs, label):
    messages = [f"bidi-{i}".encode() * (i + 1) for i in range(BIDI_MESSAGES)]
    # Lock-step: each message is sent only after the previous echo came back, so the check
    # proves the stream is interactive rather than buffered until half-close.
    outbox = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outbox.get(timeout=CALL_TIMEOUT)
            if item is done:
                return
            yield item

    responses = stubs.echo_bidi(requests(), timeout=CALL_TIMEOUT)
    got = []
    try:
        for m in messages:
            outbox.put(m)
            got.append(next(responses))
        outbox.put(done)
        rest = list(responses)
    except grpc.RpcError as e:
        raise AssertionError(
            f"{label} bidi: unexpected gRPC error {describe(e)} after {len(got)} echoes"
        ) from None
    except StopIteration:
        raise AssertionError(f"{label} bidi: stream ended after {len(got)} echoes") from None
    assert got == messages, f"{label}: bidi echoes {got!r}, want {messages!r}"
    assert rest == [], f"{label}: bidi sent {len(rest)} extra messages after half-close"
    assert responses.code() == grpc.StatusCode.OK, f"{label}: bidi ended with {responses.code()}"
    return f"bidi streaming: {BIDI_MESSAGES} messages echoed in order (lock-step)"


def check_metadata(stubs, label):
    probe = f"metadata-{label}"
    tenant = "tenant-42"
    request_md = [(PROBE_KEY, probe), (TENANT_KEY, tenant), (BIN_KEY, BIN_VALUE)]
    reply, c = call(
        f"{label} metadata call",
        stubs.echo.with_call,
        b"md",
        metadata=request_md,
        timeout=CALL_TIMEOUT,
    )
    assert reply == b"md", f"{label}: metadata call replied {reply!r}"
    seen = OBS.metadata.get(probe)
    assert seen is not None, f"{label}: the server never saw the probe metadata"
    assert seen.get(TENANT_KEY) == tenant, (
        f"{label}: server saw {TENANT_KEY}={seen.get(TENANT_KEY)!r}, want {tenant!r}")
    assert seen.get(BIN_KEY) == BIN_VALUE, (
        f"{label}: server saw {BIN_KEY}={seen.get(BIN_KEY)!r}, want all 256 byte values")
    initial = metadata_dict(c.initial_metadata())
    trailing = metadata_dict(c.trailing_metadata())
    assert initial.get(SERVER_HEADER_KEY) == SERVER_HEADER_VALUE, (
        f"{label}: initial metadata {initial!r} lacks {SERVER_HEADER_KEY}={SERVER_HEADER_VALUE}")
    assert initial.get(TENANT_SEEN_KEY) == tenant, (
        f"{label}: initial metadata {initial!r} lacks {TENANT_SEEN_KEY}={tenant}")
    assert initial.get(BIN_KEY) == BIN_VALUE, (
        f"{label}: initial metadata {BIN_KEY}={initial.get(BIN_KEY)!r}, want all 256 byte values")
    assert trailing.get(SERVER_TRAILER_KEY) == SERVER_TRAILER_VALUE, (
        f"{label}: trailing metadata {trailing!r} lacks "
        f"{SERVER_TRAILER_KEY}={SERVER_TRAILER_VALUE}")
    assert trailing.get(BIN_KEY) == BIN_VALUE, (
        f"{label}: trailing metadata {BIN_KEY}={trailing.get(BIN_KEY)!r}, want all 256 byte values")
    return (f"metadata: {TENANT_KEY} reaches the server, server header and trailer reach the "
            f"client, {BIN_KEY} (256 byte values) passes both ways untouched")


def is_child_traceparent(got, sent):
    """True if `got` continues `sent`'s trace one hop on: the same trace id and flags, another
    valid parent id."""
    if got is None or len(got) != 55:
        return False
    parent = got[36:52]
    return (
        got[:36] == sent[:36]
        and got[52:] == sent[52:]
        and parent != sent[36:52]
        and parent != "0" * 16
        and all(c in "0123456789abcdef" for c in parent)
    )


def check_trace_context(stubs, label):
    seen_values = []
    for key in ("traceparent", "rpc-transit-traceparent"):
        probe = f"trace-{key}-{label}"
        md = [(PROBE_KEY, probe), (key, TRACEPARENT), ("tracestate", TRACESTATE)]
        reply = call(f"{label} {key} call", stubs.echo, b"tp", metadata=md, timeout=CALL_TIMEOUT)
        assert reply == b"tp", f"{label}: {key} call replied {reply!r}"
        seen = OBS.metadata.get(probe)
        assert seen is not None, f"{label}: the server never saw the {key} probe"
        got = seen.get(key)
        if label == "direct":
            assert got == TRACEPARENT, f"{label}: server saw {key}={got!r}, want {TRACEPARENT}"
        else:
            assert is_child_traceparent(got, TRACEPARENT), (
                f"{label}: server saw {key}={got!r}, want a child of {TRACEPARENT} "
                "(same trace id and flags, a new parent id)")
        assert seen.get("tracestate") == TRACESTATE, (
            f"{label}: server saw tracestate={seen.get('tracestate')!r}, want it unchanged")
        seen_values.append(got)
    probe = f"trace-invalid-{label}"
    md = [(PROBE_KEY, probe), ("traceparent", TRACEPARENT_INVALID)]
    call(f"{label} invalid traceparent call", stubs.echo, b"tp", metadata=md, timeout=CALL_TIMEOUT)
    seen = OBS.metadata.get(probe) or {}
    assert seen.get("traceparent") == TRACEPARENT_INVALID, (
        f"{label}: an invalid traceparent reached the server as {seen.get('traceparent')!r}")
    if label == "direct":
        return "trace context: traceparent and tracestate reach the server as sent"
    return (f"trace context: traceparent and rpc-transit-traceparent continued one hop "
            f"({seen_values[0][36:52]} is the proxy's span), tracestate and an invalid "
            "traceparent unchanged")


def check_fail(stubs, label):
    try:
        reply = stubs.echo_fail(b"bad", timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == FAIL_CODE, f"{label}: EchoFail gave {describe(e)}, want {FAIL_CODE}"
        assert e.details() == FAIL_DETAILS, (
            f"{label}: EchoFail details {e.details()!r}, want {FAIL_DETAILS!r}")
        trailing = metadata_dict(e.trailing_metadata())
        assert trailing.get(FAIL_META_KEY) == FAIL_META_VALUE, (
            f"{label}: EchoFail trailing metadata {trailing!r} lacks "
            f"{FAIL_META_KEY}={FAIL_META_VALUE}")
        return "error status: INVALID_ARGUMENT, its details and a trailer reach the client"
    raise AssertionError(f"{label}: EchoFail succeeded with {reply!r}")


def check_deadline(stubs, label):
    probe = f"deadline-{label}"
    event = OBS.cancel_event(probe)
    start = time.monotonic()
    try:
        reply = stubs.slow(b"slow", timeout=DEADLINE, metadata=[(PROBE_KEY, probe)])
    except grpc.RpcError as e:
        took = time.monotonic() - start
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (
            f"{label}: Slow with a {DEADLINE} s deadline gave {describe(e)}, "
            "want DEADLINE_EXCEEDED")
        assert took < 2.0, f"{label}: DEADLINE_EXCEEDED took {took:.2f} s, want < 2 s"
    else:
        raise AssertionError(f"{label}: Slow with a {DEADLINE} s deadline succeeded with {reply!r}")
    assert event.wait(3.0), (
        f"{label}: the server did not see the call end within 3 s of the client's deadline")
    seen_at = time.monotonic() - start
    # The deadline travels as `grpc-timeout`: the server must see one no longer than the
    # client's own (plus the rounding of the header's units).
    remaining = OBS.slow_remaining.get(probe)
    assert remaining is not None, f"{label}: the server saw no deadline on the Slow call"
    assert 0 < remaining <= DEADLINE + 0.02, (
        f"{label}: the server saw {remaining:.3f} s remaining, want at most {DEADLINE} s")
    return (f"deadline: DEADLINE_EXCEEDED after {took:.2f} s, server saw the call end after "
            f"{seen_at:.2f} s (deadline at the server: {remaining:.2f} s)")


def check_cancel(stubs, label):
    probe = f"cancel-{label}"
    event = OBS.cancel_event(probe)
    outbox = queue.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    responses = stubs.echo_bidi(requests(), timeout=CALL_TIMEOUT, metadata=[(PROBE_KEY, probe)])
    try:
        outbox.put(b"first")
        first = call(f"{label} cancel probe", next, responses)
        assert first == b"first", f"{label}: cancel probe echoed {first!r}"
        assert responses.cancel(), f"{label}: call.cancel() reported the call already over"
    finally:
        outbox.put(None)
    assert responses.code() == grpc.StatusCode.CANCELLED, (
        f"{label}: cancelled call reports {responses.code()}")
    assert event.wait(5.0), f"{label}: the server did not see the bidi cancel within 5 s"
    return "client cancel of a bidi stream reaches the server"


def check_concurrent(stubs, label):
    def one(i):
        payload = f"concurrent-{i}-".encode() * (1 + i % 7)
        got = call(f"{label} concurrent call {i}", stubs.echo, payload, timeout=CALL_TIMEOUT)
        assert got == payload, f"{label}: concurrent call {i} echoed {got[:40]!r}..."
        return i

    with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
        futures = [pool.submit(one, i) for i in range(CONCURRENT_CALLS)]
        done = [f.result() for f in futures]
    assert sorted(done) == list(range(CONCURRENT_CALLS))
    return f"{CONCURRENT_CALLS} concurrent unary calls all succeed"


# ---------------------------------------------------------------------------------------------
# Mutual TLS


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def check_no_client_cert_refused(channel, label):
    stubs = Stubs(channel)
    try:
        reply = stubs.echo(b"no client certificate", timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, (
            f"{label}: a client without a certificate got {describe(e)}, want UNAVAILABLE")
        return f"a client without a certificate is refused ({describe(e)})"
    raise AssertionError(f"{label}: a client without a certificate got a reply {reply!r}")


def run_mtls(args):
    """Sluice's gRPC listener with TLS and required client certificates, in front of the
    grpcio server: grpcio with a client certificate passes the checks, without one it is
    refused. Returns the failures."""
    failures = []
    server = None
    sluice = None
    channels = []
    listener_tls = (
        f'tls_cert = "{args.listener_cert}"\n'
        f'tls_key = "{args.listener_key}"\n'
        f'tls_client_ca = "{args.client_ca}"\n'
        'tls_client_auth = "required"\n'
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with tempfile.TemporaryDirectory(prefix="sluice-grpcio-mtls-") as workdir:
        try:
            server, server_port = start_server()
            sluice = SluiceProcess(args.sluice, server_port, workdir, listener_tls)
            sluice.wait_listening()
            target = f"127.0.0.1:{sluice.port}"
            root = read_bytes(args.root_ca)
            with_cert = grpc.secure_channel(
                target,
                grpc.ssl_channel_credentials(
                    root_certificates=root,
                    private_key=read_bytes(args.client_key),
                    certificate_chain=read_bytes(args.client_cert),
                ),
                options=options,
            )
            without_cert = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options=options
            )
            channels = [with_cert, without_cert]
            label = "via sluice, mTLS"
            stubs = Stubs(with_cert)
            runs = [
                (check.__name__, lambda check=check: check(stubs, label))
                for check in (check_unary, check_server_stream, check_bidi, check_metadata,
                              check_fail)
            ]
            runs.append((
                "check_no_client_cert_refused",
                lambda: check_no_client_cert_refused(without_cert, label),
            ))
            for name, run in runs:
                try:
                    summary = run()
                except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
                    detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
                    failures.append(f"{name} [{label}]")
                    print(f"FAIL: {name} [{label}]: {detail}", flush=True)
                else:
                    print(f"ok: [{label}] {summary}", flush=True)
        except Exception:  # noqa: BLE001 - setup failure
            failures.append("setup")
            print("FAIL: setup:\n" + traceback.format_exc(), flush=True)
        finally:
            for ch in channels:
                ch.close()
            if sluice is not None:
                sluice.stop()
            if server is not None:
                server.stop(grace=None).wait(5)
            if sluice is not None:
                log = sluice.stderr_text()
                if "TLS handshake failed" not in log and not failures:
                    failures.append("handshake log")
                    print("FAIL: Sluice logged no failed TLS handshake for the client without "
                          "a certificate", flush=True)
                if failures:
                    print("---- sluice stderr ----\n" + log + "\n---- end of sluice stderr ----",
                          flush=True)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True, help="path to the sluice binary")
    parser.add_argument("--listener-cert", help="PEM certificate of Sluice's TLS listener")
    parser.add_argument("--listener-key", help="PEM key of --listener-cert")
    parser.add_argument("--client-ca", help="PEM CA bundle Sluice checks client certificates with")
    parser.add_argument("--root-ca", help="PEM CA bundle the grpcio client trusts")
    parser.add_argument("--client-cert", help="PEM client certificate grpcio presents")
    parser.add_argument("--client-key", help="PEM key of --client-cert")
    parser.add_argument("--server-name", default="localhost",
                        help="name Sluice's certificate is checked against")
    args = parser.parse_args()

    if args.listener_cert:
        missing = [o for o in ("listener_key", "client_ca", "root_ca", "client_cert",
                               "client_key") if getattr(args, o) is None]
        if missing:
            parser.error("the mutual-TLS checks also need --" +
                         ", --".join(m.replace("_", "-") for m in missing))
        started = time.monotonic()
        print(f"grpcio {grpc.__version__}, python {sys.version.split()[0]}", flush=True)
        failures = run_mtls(args)
        took = time.monotonic() - started
        print(f"grpcio mTLS: {len(failures)} failed, in {took:.1f} s", flush=True)
        if failures:
            print("failed: " + ", ".join(failures), flush=True)
            return 1
        return 0

    started = time.monotonic()
    print(f"grpcio {grpc.__version__}, python {sys.version.split()[0]}", flush=True)
    failures = []
    passed = 0
    server = None
    sluice = None
    channels = []
    with tempfile.TemporaryDirectory(prefix="sluice-grpcio-") as workdir:
        try:
            server, server_port = start_server()
            sluice = SluiceProcess(args.sluice, server_port, workdir)
            sluice.wait_listening()

            direct = grpc.insecure_channel(f"127.0.0.1:{server_port}")
            proxied = grpc.insecure_channel(f"127.0.0.1:{sluice.port}")
            channels = [direct, proxied]
            paths = {"direct": Stubs(direct), "via sluice": Stubs(proxied)}

            # Each check runs directly first, as a control of grpcio's own behaviour, then
            # through Sluice.
            checks = [
                check_unary,
                check_server_stream,
                check_client_stream,
                check_bidi,
                check_metadata,
                check_trace_context,
                check_fail,
                check_deadline,
                check_cancel,
                check_concurrent,
            ]
            for check in checks:
                for label in ("direct", "via sluice"):
                    t0 = time.monotonic()
                    try:
                        summary = check(paths[label], label)
                    except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
                        detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
                        failures.append(f"{check.__name__} [{label}]")
                        print(f"FAIL: {check.__name__} [{label}]: {detail}", flush=True)
                    else:
                        passed += 1
                        took = time.monotonic() - t0
                        print(f"ok: [{label}] {summary} ({took:.2f} s)", flush=True)
        except Exception:  # noqa: BLE001 - setup failure
            failures.append("setup")
            print("FAIL: setup:\n" + traceback.format_exc(), flush=True)
        finally:
            for ch in channels:
                ch.close()
            if sluice is not None:
                sluice.stop()
            if server is not None:
                server.stop(grace=None).wait(5)
            if failures and sluice is not None:
                print("---- sluice stderr ----", flush=True)
                print(sluice.stderr_text(), flush=True)
                print("---- end of sluice stderr ----", flush=True)

    took = time.monotonic() - started
    print(f"grpcio peer: {passed} checks ok, {len(failures)} failed, in {took:.1f} s", flush=True)
    if failures:
        print("failed: " + ", ".join(failures), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
