"""The keep-alive transport: installed only where nothing but the cost changes, and the
exporter's posts arrive as they did through ``requests`` (a real HTTP server here)."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from devkit import _keepalive as transport_module
from devkit._keepalive import KeepAliveTransport, use_keep_alive
from devkit.testing import OTLPReceiver, Reply

_PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "NETRC",
)


@pytest.fixture
def collector() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc of the machine's


@pytest.fixture
def keep_alive_exporter() -> Iterator[Callable[..., OTLPSpanExporter]]:
    """OTLP/HTTP exporters with the keep-alive transport, shut down after the test."""
    made: list[OTLPSpanExporter] = []

    def make(endpoint: str, **options: Any) -> OTLPSpanExporter:
        exporter = OTLPSpanExporter(endpoint=endpoint, **options)
        assert use_keep_alive(exporter)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.shutdown()


# -- where it is installed -----------------------------------------------------------------


def test_installed_for_a_plain_http_endpoint() -> None:
    exporter = OTLPSpanExporter(endpoint="http://collector:4318/v1/traces")
    assert use_keep_alive(exporter)
    assert isinstance(exporter._client._transport, KeepAliveTransport)


@pytest.mark.parametrize(
    "variables",
    [
        {"HTTP_PROXY": "http://proxy:3128"},
        {"http_proxy": "http://proxy:3128", "no_proxy": "elsewhere"},
        {"ALL_PROXY": "http://proxy:3128"},
    ],
)
def test_not_installed_where_requests_would_use_a_proxy(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    exporter = OTLPSpanExporter(endpoint="http://collector:4318/v1/traces")
    assert not use_keep_alive(exporter)
    assert not isinstance(exporter._client._transport, KeepAliveTransport)


@pytest.mark.parametrize(
    "variables",
    [
        {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "collector"},
        {"HTTPS_PROXY": "http://proxy:3128"},  # applies to https:// only
    ],
)
def test_installed_where_no_proxy_applies(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert use_keep_alive(OTLPSpanExporter(endpoint="http://collector:4318/v1/traces"))


def test_not_installed_where_netrc_gives_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine collector login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert not use_keep_alive(OTLPSpanExporter(endpoint="http://collector:4318/v1/traces"))
    assert use_keep_alive(OTLPSpanExporter(endpoint="http://other:4318/v1/traces"))


def test_not_installed_for_https_custom_sessions_or_other_transports() -> None:
    assert not use_keep_alive(OTLPSpanExporter(endpoint="https://collector:4318/v1/traces"))
    # requests sends credentials in the URL as basic auth; the keep-alive transport won't.
    assert not use_keep_alive(OTLPSpanExporter(endpoint="http://u:p@collector:4318/v1/traces"))

    class Signing(requests.Session):
        pass

    assert not use_keep_alive(
        OTLPSpanExporter(endpoint="http://collector:4318/v1/traces", session=Signing())
    )
    authed = requests.Session()
    authed.auth = ("user", "secret")
    assert not use_keep_alive(
        OTLPSpanExporter(endpoint="http://collector:4318/v1/traces", session=authed)
    )
    other = OTLPSpanExporter(
        endpoint="http://collector:4318/v1/traces", _transport=Urllib3HTTPTransport()
    )
    assert not use_keep_alive(other)
    assert isinstance(other._client._transport, Urllib3HTTPTransport)
    assert not use_keep_alive(object())


# -- what the collector sees -----------------------------------------------------------------


def test_posts_reuse_one_connection_and_carry_the_exporters_headers(
    keep_alive_exporter: Callable[..., OTLPSpanExporter],
    collector: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme")
    exporter = keep_alive_exporter(collector.traces_url)
    for n in range(5):
        assert exporter._client.export(b"batch %d" % n).success
    assert [post.data for post in collector.received()] == [b"batch %d" % n for n in range(5)]
    assert len(collector.connections()) == 1
    headers = collector.received()[0].headers
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-tenant"] == "acme"
    assert headers["user-agent"].startswith("OTel-OTLP-Exporter-Python")


def test_compression_stays_the_exporters(
    keep_alive_exporter: Callable[..., OTLPSpanExporter], collector: OTLPReceiver
) -> None:
    exporter = keep_alive_exporter(collector.traces_url, compression=Compression.Gzip)
    assert exporter._client.export(b"spans" * 100).success
    post = collector.received()[0]
    headers, body = post.headers, post.data
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == b"spans" * 100


def test_a_connection_the_collector_closed_is_reopened(
    keep_alive_exporter: Callable[..., OTLPSpanExporter], collector: OTLPReceiver
) -> None:
    collector.reply = Reply(close=True)
    exporter = keep_alive_exporter(collector.traces_url)
    for _ in range(3):
        assert exporter._client.export(b"x").success
    assert len(collector.received()) == 3
    assert len(collector.connections()) == 3


def test_an_idle_connection_dropped_under_it_costs_a_reconnect_not_the_batch(
    keep_alive_exporter: Callable[..., OTLPSpanExporter],
    collector: OTLPReceiver,
) -> None:
    exporter = keep_alive_exporter(collector.traces_url)
    assert exporter._client.export(b"first").success
    transport = exporter._client._transport
    assert transport._conn is not None and transport._conn.sock is not None
    transport._conn.sock.close()  # as when the collector's idle timeout closed it
    assert exporter._client.export(b"second").success
    assert [post.data for post in collector.received()] == [b"first", b"second"]


def test_rejected_batches_fail_and_are_not_retried(
    keep_alive_exporter: Callable[..., OTLPSpanExporter], collector: OTLPReceiver
) -> None:
    collector.reply = Reply(status=400)
    exporter = keep_alive_exporter(collector.traces_url)
    result = exporter._client.export(b"x")
    assert not result.success
    assert result.status_code == 400
    assert len(collector.received()) == 1


def test_retryable_status_is_retried_with_the_exporters_backoff(
    keep_alive_exporter: Callable[..., OTLPSpanExporter],
    collector: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector.reply = Reply(status=503)
    exporter = keep_alive_exporter(collector.traces_url, timeout=0.5)
    monkeypatch.setattr(exporter._client, "_compute_backoff", lambda retry: 0.05)
    result = exporter._client.export(b"x")
    assert not result.success
    assert len(collector.received()) >= 2  # retried, then gave up within the timeout


def test_a_response_beyond_the_bound_is_cut_and_the_connection_dropped(
    keep_alive_exporter: Callable[..., OTLPSpanExporter],
    collector: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "MAX_RESPONSE_BYTES", 16)
    collector.reply = Reply(body=b"r" * 1000)
    exporter = keep_alive_exporter(collector.traces_url)
    transport = exporter._client._transport
    result = transport.request("POST", collector.traces_url, data=b"x", timeout=5)
    assert result.status_code == 200
    assert result.content() == b"r" * 16
    assert transport._conn is None
    assert exporter._client.export(b"y").success
    assert len(collector.connections()) == 2


def test_a_dead_endpoint_is_a_connection_error_not_an_exception(
    keep_alive_exporter: Callable[..., OTLPSpanExporter],
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = keep_alive_exporter(f"http://127.0.0.1:{port}/v1/traces", timeout=0.5)
    transport = exporter._client._transport
    result = transport.request("POST", exporter._endpoint, data=b"x", timeout=0.5)
    assert result.error is not None and result.status_code is None
    assert transport.is_connection_error(result.error)
    assert not exporter._client.export(b"x").success


def test_a_forked_child_opens_its_own_connection(
    keep_alive_exporter: Callable[..., OTLPSpanExporter], collector: OTLPReceiver
) -> None:
    exporter = keep_alive_exporter(collector.traces_url)
    assert exporter._client.export(b"parent").success
    transport = exporter._client._transport
    parent_conn = transport._conn
    transport._pid = -1  # what a child sees: the connection belongs to another process
    assert exporter._client.export(b"child").success
    assert transport._conn is not parent_conn
    assert len(collector.connections()) == 2
    parent_conn.close()  # the parent's to close, in a real fork


def test_other_urls_go_to_the_exporters_own_transport(
    keep_alive_exporter: Callable[..., OTLPSpanExporter], collector: OTLPReceiver
) -> None:
    exporter = keep_alive_exporter(collector.traces_url)
    transport = exporter._client._transport
    other = collector.endpoint + "/elsewhere"
    result = transport.request("POST", other, data=b"x", timeout=5)
    assert result.status_code == 200
    assert type(result).__module__.endswith("_requests")


def _raw_request(send: Callable[[str, int], None]) -> tuple[bytes, int]:
    """What ``send(host, port)`` writes to a listening socket, and in how many reads the
    server got it (one write of a small request arrives in one read)."""
    import socket
    import threading

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"body!"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got.append(chunk)
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=serve)
        thread.start()
        send("127.0.0.1", port)
        thread.join(5)
    # The server's port differs from run to run: it is in the Host header.
    return b"".join(got).replace(b":%d\r\n" % port, b":PORT\r\n"), len(got)


class _CountedWrites:
    """A socket whose writes are counted, and slow: two would arrive in two reads."""

    def __init__(self, sock: Any, writes: list[int]) -> None:
        self._sock = sock
        self._writes = writes

    def sendall(self, data: bytes) -> None:
        import time

        self._writes.append(len(data))
        time.sleep(0.05)
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_posts_head_and_body_go_in_one_write_as_http_client_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection sends what the stock ``http.client`` connection sends, byte for
    byte, but in one write: each write lets go of the GIL."""
    import http.client

    headers = {"Content-Type": "application/x-protobuf", "User-Agent": "x"}
    writes: list[int] = []

    def stock(host: str, port: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("POST", "/v1/traces", body=b"body!", headers=headers)
        conn.getresponse().read()
        conn.close()

    connect = transport_module._Connection.connect

    def counted_connect(conn: http.client.HTTPConnection) -> None:
        connect(conn)
        conn.sock = _CountedWrites(conn.sock, writes)

    monkeypatch.setattr(transport_module._Connection, "connect", counted_connect)

    def ours(host: str, port: int) -> None:
        url = f"http://{host}:{port}/v1/traces"
        transport = KeepAliveTransport(url, Urllib3HTTPTransport())
        answer = transport.request("POST", url, headers=headers, timeout=5, data=b"body!")
        assert answer.status_code == 200
        transport.close()

    expected, _ = _raw_request(stock)
    got, reads = _raw_request(ours)
    assert got == expected and expected.endswith(b"\r\n\r\nbody!")
    assert len(writes) == 1 and reads == 1
