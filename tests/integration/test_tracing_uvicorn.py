"""Acceptance of tracing: real uvicorn processes, OTLP decoded with opentelemetry-proto."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from servers import OTLPReceiver, attributes, clean_env, free_port, serve, uvicorn_argv

from devkit.tracing.sampling import ratio_keeps

pytestmark = pytest.mark.integration

RATIO = 0.1
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


def traceparent(trace_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-{'01' if sampled else '00'}"


def test_tail_sampling_exports_exactly_what_the_rules_keep(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    rng = random.Random(20261126)
    port = free_port()
    env = clean_env(
        DEVKIT_SERVICE_NAME="sampled-svc",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        DEVKIT_SAMPLE_SUCCESS_RATIO=str(RATIO),
        DEVKIT_SLOW_THRESHOLD_MS="200",
    )
    fast = [rng.getrandbits(128) | 1 for _ in range(600)]
    errors = [rng.getrandbits(128) | 1 for _ in range(30)]
    slow = [rng.getrandbits(128) | 1 for _ in range(10)]
    parents_sampled = [rng.getrandbits(128) | 1 for _ in range(20)]
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        with httpx.Client(base_url=server.url, limits=NO_KEEPALIVE, timeout=10) as client:
            for tid in fast:
                r = client.get("/items/1", headers={"traceparent": traceparent(tid, False)})
                assert r.status_code == 200
            for tid in errors:
                r = client.get("/boom", headers={"traceparent": traceparent(tid, False)})
                assert r.status_code == 500
            for tid in slow:
                r = client.get("/slow?ms=250", headers={"traceparent": traceparent(tid, False)})
                assert r.status_code == 200
            for tid in parents_sampled:
                r = client.get("/items/2", headers={"traceparent": traceparent(tid, True)})
                assert r.status_code == 200
        # SIGTERM: every kept span must reach the receiver before the process exits
        # (uvicorn re-raises the signal after its shutdown, so atexit never runs).
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)

    exported = {int(t, 16) for t in receiver.trace_ids()}
    expected_fast = {t for t in fast if ratio_keeps(t, RATIO)}
    assert 30 <= len(expected_fast) <= 90  # the rule itself, for these ids
    assert exported & set(fast) == expected_fast
    assert set(errors) <= exported
    assert set(slow) <= exported
    assert set(parents_sampled) <= exported
    assert len(exported) == len(expected_fast) + 30 + 10 + 20

    spans = receiver.spans()
    resources = {
        kv.value.string_value
        for resource, _ in spans
        for kv in resource.attributes
        if kv.key == "service.name"
    }
    assert resources == {"sampled-svc"}
    by_trace = {span.trace_id.hex(): span for _, span in spans}
    boom = by_trace[f"{errors[0]:032x}"]
    attrs = attributes(boom)
    assert boom.kind == PbSpan.SPAN_KIND_SERVER
    assert boom.name == "GET /boom"
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/boom"
    assert attrs["url.path"] == "/boom"
    assert attrs["http.response.status_code"] == 500
    assert attrs["error.type"] == "RuntimeError"
    assert "correlation.id" in attrs
    assert boom.status.code == PbStatus.STATUS_CODE_ERROR
    (event,) = [e for e in boom.events if e.name == "exception"]
    event_attrs = {kv.key: kv.value.string_value for kv in event.attributes}
    assert event_attrs["exception.type"] == "RuntimeError"
    # span attributes pass through the redactor: the e-mail in the message is masked
    assert "ada@example.com" not in event_attrs["exception.message"]
    assert "[REDACTED:email]" in event_attrs["exception.message"]
    ok = by_trace[f"{parents_sampled[0]:032x}"]
    assert attributes(ok)["http.route"] == "/items/{item_id}"
    assert attributes(ok)["http.response.status_code"] == 200
    assert ok.parent_span_id != b""  # child of the inbound remote parent


def test_malformed_traceparent_starts_a_new_trace(receiver: OTLPReceiver, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, DEVKIT_SAMPLE_SUCCESS_RATIO="1.0"
    )
    bad = [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ]
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        for value in bad:
            r = httpx.get(server.url + "/items/3", headers={"traceparent": value})
            assert r.status_code == 200
        server.stop(signal.SIGTERM)
    ids = receiver.trace_ids()
    assert len(ids) == len(bad)
    assert "4bf92f3577b34da6a3ce929d0e0e4736" not in ids
    assert "0" * 32 not in ids


def test_a_kept_server_span_carries_the_recommended_http_attributes(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """Over a real HTTP/1.1 connection: the attributes the semantic conventions recommend,
    and what the client sent redacted as the access log redacts it."""
    port = free_port()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, DEVKIT_SAMPLE_SUCCESS_RATIO="1.0"
    )
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            r = client.get(
                "/items/7",
                params={"page": "2", "api_key": "s3cr3t"},
                headers={"User-Agent": "checkout-client/1.4 (ops@example.com)"},
            )
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
            body_size = len(r.content)
        server.stop(signal.SIGTERM)
    (span,) = [s for _, s in receiver.spans() if s.kind == PbSpan.SPAN_KIND_SERVER]
    got = attributes(span)
    assert got["url.query"] == "page=[REDACTED]&api_key=[REDACTED]"
    assert got["user_agent.original"] == "checkout-client/1.4 ([REDACTED:email])"
    assert got["network.protocol.version"] == "1.1"
    assert (got["server.address"], got["server.port"]) == ("127.0.0.1", port)
    assert got["client.address"] == got["network.peer.address"] == "127.0.0.1"
    assert 0 < got["network.peer.port"] < 65536 and got["network.peer.port"] != port
    assert got["http.response.body.size"] == body_size
    assert got["url.path"] == "/items/7" and got["http.route"] == "/items/{item_id}"
    assert b"s3cr3t" not in b"".join(r.body for r in receiver.received())


def test_two_services_share_one_trace_and_correlation_id(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    down_port, up_port = free_port(), free_port()
    common = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "DEVKIT_SAMPLE_SUCCESS_RATIO": "1.0",
    }
    down_env = clean_env(DEVKIT_SERVICE_NAME="downstream", **common)
    up_env = clean_env(
        DEVKIT_SERVICE_NAME="upstream", DOWNSTREAM_URL=f"http://127.0.0.1:{down_port}", **common
    )
    with (
        serve(
            uvicorn_argv("examples.fastapi_app:app", down_port), down_env, tmp_path, down_port
        ) as down,
        serve(uvicorn_argv("examples.fastapi_app:app", up_port), up_env, tmp_path, up_port) as up,
    ):
        r = httpx.get(up.url + "/proxy/5", headers={"X-Correlation-ID": "chain-42"})
        assert r.status_code == 200 and r.json() == {"downstream_status": 200}
        up.stop(signal.SIGTERM)
        down.stop(signal.SIGTERM)
        up_logs, down_logs = up.json_lines(), down.json_lines()

    up_access = [x for x in up_logs if x.get("message") == "request completed"]
    down_access = [x for x in down_logs if x.get("message") == "request completed"]
    assert up_access[0]["correlation_id"] == "chain-42"
    assert down_access[0]["correlation_id"] == "chain-42"
    assert up_access[0]["trace_id"] == down_access[0]["trace_id"]

    spans = [s for _, s in receiver.spans()]
    assert len({s.trace_id for s in spans}) == 1
    up_server = next(s for s in spans if s.name == "GET /proxy/{item_id}")
    client = next(s for s in spans if s.kind == PbSpan.SPAN_KIND_CLIENT)
    down_server = next(s for s in spans if s.name == "GET /items/{item_id}")
    assert client.parent_span_id == up_server.span_id
    assert down_server.parent_span_id == client.span_id
