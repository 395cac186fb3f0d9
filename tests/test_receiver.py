"""devkit.testing.OTLPReceiver: what it records and decodes, and how it answers."""

from __future__ import annotations

import gzip
import http.client
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devkit.testing import OTLPReceiver, Reply, Traffic

# Never through a proxy: the receiver is on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def export(*names: str, trace_id: bytes = bytes(range(16)), service: str = "shop") -> bytes:
    """An ``ExportTraceServiceRequest`` with one span per name, serialised."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", service
    scope_spans = resource_spans.scope_spans.add()
    for name in names:
        span = scope_spans.spans.add()
        span.name, span.trace_id = name, trace_id
    return request.SerializeToString()


def send(
    url: str, data: bytes, method: str = "POST", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the answer, whatever the status."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as running:
        yield running


# -- recording and decoding ------------------------------------------------------------------


def test_records_every_post_and_put_with_lower_case_headers(receiver: OTLPReceiver) -> None:
    send(receiver.traces_url, export("a"), headers={"X-Tenant": "acme"})
    send(receiver.endpoint + "/v0.5/traces?x=1", b"\x91\x90", method="PUT")
    first, second = receiver.received()
    assert (first.method, first.path, first.headers["x-tenant"]) == ("POST", "/v1/traces", "acme")
    assert first.client[0] == "127.0.0.1"
    assert (second.method, second.path, second.data) == ("PUT", "/v0.5/traces?x=1", b"\x91\x90")
    assert receiver.traces_url == receiver.endpoint + "/v1/traces"
    assert receiver.endpoint == f"http://127.0.0.1:{receiver.port}"


@pytest.mark.parametrize(
    ("encoding", "encode"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("", bytes)]
)
def test_decodes_the_content_encoding_and_the_spans(
    receiver: OTLPReceiver, encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    body = export("GET /items/{id}", "SELECT")
    wire = encode(body)
    status, _, answer = send(receiver.traces_url, wire, headers={"Content-Encoding": encoding})
    assert (status, answer) == (200, b"")  # an empty ExportTraceServiceResponse
    (post,) = receiver.received()
    assert (post.data, post.body) == (wire, body)
    assert len(receiver.requests()) == 1
    pairs = receiver.spans()
    assert [span.name for _, span in pairs] == ["GET /items/{id}", "SELECT"]
    assert pairs[0][0].attributes[0].value.string_value == "shop"
    assert receiver.trace_ids() == {bytes(range(16)).hex()}
    assert receiver.malformed == 0


def test_counts_malformed_trace_bodies_and_answers_them_as_configured(
    receiver: OTLPReceiver,
) -> None:
    assert send(receiver.traces_url, b"\xff\x00garbage")[0] == 200  # recorded, not judged
    send(receiver.traces_url, b"not gzip", headers={"Content-Encoding": "gzip"})
    send(receiver.endpoint + "/v1/logs", b"\xff\x00garbage")  # not a traces path
    assert receiver.malformed == 2
    assert receiver.requests() == []
    assert len(receiver.received()) == 3

    receiver.reject_malformed = True
    status, _, body = send(receiver.traces_url, b"\xff\x00garbage")
    assert (status, body) == (400, b"not an OTLP ExportTraceServiceRequest")
    assert send(receiver.traces_url, export("ok"))[0] == 200
    assert receiver.malformed == 3
    assert [span.name for _, span in receiver.spans()] == ["ok"]


# -- answers ---------------------------------------------------------------------------------


def test_answers_the_configured_status_headers_and_body(receiver: OTLPReceiver) -> None:
    receiver.reply = Reply(status=503, headers={"Retry-After": "7"}, body=b"busy")
    status, headers, body = send(receiver.traces_url, export("a"))
    assert (status, headers["Retry-After"], body) == (503, "7", b"busy")
    receiver.reply = Reply(status=429)
    assert send(receiver.traces_url, export("a"))[0] == 429
    assert len(receiver.received()) == 2  # recorded whatever the answer


def test_answers_per_path_with_the_query_left_out() -> None:
    rates = Reply(body=b'{"rate_by_service":{}}', content_type="application/json")
    with OTLPReceiver(replies={"/v0.4/traces": rates}) as receiver:
        status, headers, body = send(receiver.endpoint + "/v0.4/traces?x=1", b"\x90", "PUT")
        assert (status, headers["Content-Type"], body) == (200, "application/json", rates.body)
        status, headers, body = send(receiver.traces_url, export("a"))
        assert (status, headers["Content-Type"], body) == (200, "application/x-protobuf", b"")


def test_waits_the_configured_delay_before_answering(receiver: OTLPReceiver) -> None:
    receiver.reply = Reply(delay_s=0.3)
    started = time.monotonic()
    assert send(receiver.traces_url, export("a"))[0] == 200
    assert time.monotonic() - started >= 0.3
    assert len(receiver.received()) == 1


@pytest.mark.parametrize(("close", "connections"), [(False, 1), (True, 3)])
def test_keeps_connections_alive_unless_told_to_close(
    receiver: OTLPReceiver, close: bool, connections: int
) -> None:
    receiver.reply = Reply(close=close)
    client = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        for _ in range(3):
            client.request("POST", "/v1/traces", body=export("a"))
            answer = client.getresponse()
            answer.read()
            assert (answer.getheader("Connection") == "close") is close
    finally:
        client.close()
    assert len(receiver.received()) == 3
    assert len(receiver.connections()) == connections


def test_stop_closes_kept_alive_connections_and_keeps_what_was_received() -> None:
    receiver = OTLPReceiver().start()
    client = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        client.request("POST", "/v1/traces", body=export("a"))
        client.getresponse().read()
        assert client.sock is not None
        receiver.stop()
        assert client.sock.recv(1) == b""  # closed by the receiver, not left hanging
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", receiver.port), 1).close()
    assert len(receiver.spans()) == 1


def test_logs_nothing(receiver: OTLPReceiver, capfd: pytest.CaptureFixture[str]) -> None:
    send(receiver.traces_url, export("a"))
    send(receiver.traces_url, b"\xff")
    assert capfd.readouterr() == ("", "")


# -- reads -----------------------------------------------------------------------------------


def test_take_counts_wire_bytes_and_spans_and_empties(receiver: OTLPReceiver) -> None:
    body = gzip.compress(export("a", "b"))
    send(receiver.traces_url, body, headers={"Content-Encoding": "gzip"})
    send(receiver.endpoint + "/v0.5/traces", b"\x91\x90", method="PUT")
    assert receiver.take() == Traffic(requests=2, bytes=len(body) + 2, spans=2, log_records=0)
    assert receiver.received() == []
    assert receiver.take() == Traffic(requests=0, bytes=0, spans=0, log_records=0)


def _logs(*bodies: str) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "shop"
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "app"
    for body in bodies:
        scope_logs.log_records.add().body.string_value = body
    return request.SerializeToString()


def test_log_exports_are_decoded_and_counted(receiver: OTLPReceiver) -> None:
    send(receiver.logs_url, gzip.compress(_logs("a", "b")), headers={"Content-Encoding": "gzip"})
    send(receiver.endpoint + "/v1/logs", b"\xff not protobuf")
    send(receiver.traces_url, export("span"))
    records = receiver.log_records()
    assert [(scope.name, r.body.string_value) for _res, scope, r in records] == [
        ("app", "a"),
        ("app", "b"),
    ]
    assert records[0][0].attributes[0].value.string_value == "shop"
    assert len(receiver.log_requests()) == 1 and len(receiver.spans()) == 1
    traffic = receiver.take()
    assert (traffic.requests, traffic.spans, traffic.log_records) == (3, 1, 2)


def test_take_counts_no_spans_without_opentelemetry_proto(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(receiver.traces_url, export("a"))
    monkeypatch.setitem(
        sys.modules, "opentelemetry.proto.collector.trace.v1.trace_service_pb2", None
    )
    assert receiver.take() == Traffic(requests=1, bytes=len(export("a")), spans=None)
    assert Traffic(1, 1, None).log_records is None


def test_wait_for_polls_until_the_predicate_holds(receiver: OTLPReceiver) -> None:
    assert not receiver.wait_for(lambda r: r.spans(), timeout=0.2)
    send(receiver.traces_url, export("a"))
    assert receiver.wait_for(lambda r: len(r.spans()) == 1, timeout=5)


def test_needs_a_start_for_its_address() -> None:
    with pytest.raises(RuntimeError, match="until it starts"):
        OTLPReceiver().endpoint  # noqa: B018


# -- without pytest ----------------------------------------------------------------------------


def test_the_receiver_and_the_demo_work_without_pytest_or_opentelemetry_proto() -> None:
    # What ``devkit demo`` imports, where pytest is not installed; decoding is the only
    # use of opentelemetry-proto, so recording works without it too.
    code = (
        "import sys, urllib.request\n"
        "sys.modules['pytest'] = None\n"
        "sys.modules['opentelemetry.proto'] = None\n"
        "from devkit.cli import demo\n"
        "import devkit.testing\n"
        "from devkit.testing._receiver import OTLPReceiver\n"
        "assert not hasattr(devkit.testing, 'devkit_logs')\n"
        "assert 'devkit_logs' not in devkit.testing.__all__\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "with OTLPReceiver() as receiver:\n"
        "    opener.open(urllib.request.Request(receiver.traces_url, data=b'x'), timeout=10)\n"
        "    print(receiver.take())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Traffic(requests=1, bytes=1, spans=None, log_records=None)\n"


def test_the_plugin_defines_its_fixtures_where_pytest_is_importable() -> None:
    import devkit.testing

    for name in ("devkit_logs", "devkit_metrics", "devkit_reset", "devkit_spans"):
        assert name in devkit.testing.__all__
    assert {"OTLPReceiver", "Reply", "Traffic"} <= set(devkit.testing.__all__)
    assert all(hasattr(devkit.testing, name) for name in devkit.testing.__all__)
