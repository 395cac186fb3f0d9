"""Keys OpenTelemetry's ``TraceState`` rejects travel on in devkit's ``_TraceState``.

``opentelemetry.trace.TraceState`` validates keys with Trace Context Level 1's regex, so
``1abc``, ``foo@``, ``a@b@c`` or a system-id over 14 characters are logged and dropped.
The current grammar allows them and a service "MUST send" a received ``tracestate`` on
(Editor's Draft, "Mutating the tracestate Field"), so devkit carries them in a subclass:
these tests follow one such state from the inbound header to every place a span context
goes (server span, SDK child spans, samplers, exporters) and back out in ``inject``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceState
from request_record import end_request, start_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import devkit
from devkit.testing import CapturedSpans
from devkit.tracing._otlp import encode_spans
from devkit.tracing._span import ServerSpanFactory
from devkit.tracing.propagation import (
    W3CPropagator,
    _TraceState,
    extract,
    format_tracestate,
    parse_tracestate,
)
from devkit.tracing.sampling import ErrorBiasedSampler

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
#: Every key here is valid in Level 2 / the draft and rejected by TraceState's regex.
FOREIGN = "1abc=one,foo@=two,foo@@bar=three,a@b@c=four,t@" + "v" * 15 + "=five"
HEADER = f"rojo=00f067aa0ba902b7,{FOREIGN},congo=t61rcWkgMzE"
KEYS = ["rojo", "1abc", "foo@", "foo@@bar", "a@b@c", "t@" + "v" * 15, "congo"]


def _getter(headers: dict[str, list[str]]) -> Callable[[str], Sequence[str]]:
    return lambda name: headers.get(name, ())


def _remote(tracestate: str = HEADER) -> SpanContext:
    context = extract(_getter({"traceparent": [VALID], "tracestate": [tracestate]}))
    return trace.get_current_span(context).get_span_context()


def _injected(context: Context) -> dict[str, str]:
    carrier: dict[str, str] = {}
    W3CPropagator().inject(carrier, context)
    return carrier


def test_opentelemetry_trace_state_drops_these_keys(caplog: pytest.LogCaptureFixture) -> None:
    # Why devkit cannot hand them to TraceState: it logs and leaves them out.
    with caplog.at_level(logging.WARNING):
        stock = TraceState([("1abc", "one"), ("foo@@bar", "three"), ("rojo", "1")])
    assert list(stock) == ["rojo"]
    assert caplog.records


def test_a_parsed_state_holds_them_in_order_without_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        state = _remote().trace_state
    assert caplog.records == []
    assert isinstance(state, TraceState)
    assert list(state) == KEYS
    assert list(state.keys()) == KEYS
    assert list(state.values())[1:3] == ["one", "two"]
    assert state["foo@@bar"] == "three"
    assert state.get("a@b@c") == "four"
    assert "1abc" in state and "nope" not in state
    assert len(state) == 7
    assert state.to_header() == HEADER
    assert format_tracestate(state) == HEADER
    assert repr(state).startswith("['{key=rojo, value=00f067aa0ba902b7}', '{key=1abc, value=one}'")


def test_every_public_method_of_trace_state_is_overridden() -> None:
    # _TraceState keeps its members itself; a TraceState method it inherited would read
    # the base class's (empty) storage. A new method in an OpenTelemetry release fails
    # here until it is implemented. get_default only calls cls(), so it is inherited.
    inherited_on_purpose = {"get_default"}
    for name, attribute in vars(TraceState).items():
        if not callable(attribute) and not isinstance(attribute, classmethod | staticmethod):
            continue
        if name in inherited_on_purpose:
            continue
        assert name in vars(_TraceState), f"_TraceState does not implement {name}"
    assert type(_TraceState.get_default()) is _TraceState
    assert len(_TraceState.get_default()) == 0


def test_a_state_compares_copies_and_pickles_like_a_mapping() -> None:
    state = _remote().trace_state
    assert state == {key: state[key] for key in KEYS}
    plain = _remote("rojo=1,congo=2").trace_state
    assert plain == TraceState([("rojo", "1"), ("congo", "2")])
    for clone in (copy.copy(state), copy.deepcopy(state), pickle.loads(pickle.dumps(state))):
        assert type(clone) is _TraceState
        assert list(clone.items()) == list(state.items())


# -- the TraceState API, as OpenTelemetry defines it, over the current key grammar -------------


def test_add_puts_a_new_key_first_and_keeps_the_others() -> None:
    state = _remote().trace_state
    added = state.add("devkit", "v1")
    assert type(added) is _TraceState
    assert format_tracestate(added) == f"devkit=v1,{HEADER}"
    assert format_tracestate(state) == HEADER  # immutable
    assert state.add("9@x@", "ok").to_header().startswith("9@x@=ok,rojo=")
    # Like TraceState.add: an existing key, an invalid pair or a full state change nothing.
    assert state.add("rojo", "other") is state
    assert state.add("Upper", "v") is state
    assert state.add("@lead", "v") is state
    assert state.add("k", "a=b") is state
    assert state.add("k", "") is state
    assert state.add(1, "v") is state  # type: ignore[arg-type]
    full = parse_tracestate([",".join(f"k{i}=v" for i in range(32))])
    assert full.add("one@more", "v") is full


def test_update_moves_the_key_first_and_delete_removes_it() -> None:
    state = _remote().trace_state
    updated = state.update("foo@@bar", "new")
    assert list(updated)[:2] == ["foo@@bar", "rojo"]
    assert updated["foo@@bar"] == "new" and len(updated) == 7
    upserted = state.update("devkit", "v")  # absent: added first, as OpenTelemetry does
    assert next(iter(upserted)) == "devkit" and len(upserted) == 8
    assert state.update("bad key", "v") is state
    full = parse_tracestate([",".join(f"k{i}=v" for i in range(32))])
    assert full.update("k31", "w")["k31"] == "w"  # updating is allowed at 32
    assert full.update("k32", "w") is full
    deleted = state.delete("1abc")
    assert type(deleted) is _TraceState
    assert list(deleted) == [k for k in KEYS if k != "1abc"]
    assert state.delete("missing") is state


def test_the_constructor_and_from_header_follow_the_current_grammar(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        built = _TraceState([("1abc", "x"), ("Bad", "x"), ("a@b@c", "y"), ("1abc", "z")])
        assert list(built.items()) == [("1abc", "x"), ("a@b@c", "y")]
        assert len(_TraceState([(f"k{i}", "v") for i in range(33)])) == 0  # as TraceState
        assert len(_TraceState()) == 0
        parsed = _TraceState.from_header(["foo@=1, 1abc=2", "foo@=3"])
        assert list(parsed.items()) == [("foo@", "1"), ("1abc", "2")]
    assert caplog.records == []


def test_format_tracestate_keeps_512_characters_of_a_grown_state() -> None:
    # add/update may take a state past the limit; what is written is trimmed the way a
    # received list is ("tracestate Limits": entries over 128 characters first).
    state = parse_tracestate([f"a{i}={'v' * 90}" for i in range(5)])
    assert len(format_tracestate(state)) == 469
    grown = state.add("big", "w" * 200)
    assert len(grown) == 6
    assert list(parse_tracestate([format_tracestate(grown)])) == [f"a{i}" for i in range(5)]
    smaller = state.add("new", "x" * 60)  # no entry over 128: the right-most goes
    assert len(smaller.to_header()) == 534
    assert list(parse_tracestate([format_tracestate(smaller)])) == [
        "new",
        *[f"a{i}" for i in range(4)],
    ]
    # A plain TraceState is trimmed the same way.
    plain = TraceState([(f"k{i}", "v" * 100) for i in range(6)])
    assert format_tracestate(plain) == ",".join(f"k{i}={'v' * 100}" for i in range(4))


# -- wherever a span context goes --------------------------------------------------------------


def test_inject_writes_every_member_from_the_remote_parent() -> None:
    context = extract(_getter({"traceparent": [VALID], "tracestate": [HEADER]}))
    assert _injected(context)["tracestate"] == HEADER


def test_server_span_and_sdk_child_spans_carry_the_state() -> None:
    remote = _remote()
    resource = Resource.create({"service.name": "svc"})
    factory = ServerSpanFactory(ratio=0.0, resource=lambda: resource, on_end=lambda s: None)
    server = start_request(factory, parent=remote)
    assert server.context.trace_state is remote.trace_state
    server_context = trace.set_span_in_context(server, Context())
    assert _injected(server_context)["tracestate"] == HEADER
    for sampler in (ParentBased(ALWAYS_ON), ErrorBiasedSampler(0.0)):
        tracer = TracerProvider(sampler=sampler).get_tracer("child")
        with tracer.start_as_current_span("db", context=server_context) as child:
            assert list(child.get_span_context().trace_state) == KEYS
            outbound = _injected(trace.set_span_in_context(child, Context()))
            assert outbound["tracestate"] == HEADER
            assert outbound["traceparent"].split("-")[1] == TRACE_ID
    # and an SDK span straight under the remote parent
    tracer = TracerProvider().get_tracer("client")
    parent = trace.set_span_in_context(NonRecordingSpan(remote), Context())
    with tracer.start_as_current_span("call", context=parent) as client:
        assert _injected(trace.set_span_in_context(client, Context()))["tracestate"] == HEADER
    end_request(factory, server, "/", 200)


def test_exported_spans_carry_the_state() -> None:
    resource = Resource.create({"service.name": "svc"})
    factory = ServerSpanFactory(ratio=1.0, resource=lambda: resource, on_end=lambda s: None)
    span = start_request(factory, parent=_remote())
    end_request(factory, span, "/", 200)
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode_spans([span]))
    assert ours == stock_encode([span.to_readable()])
    assert ours.resource_spans[0].scope_spans[0].spans[0].trace_state == HEADER


async def _outbound(request: Request) -> Response:
    # What an instrumented HTTP client would send from inside the handler.
    carrier: dict[str, str] = {}
    W3CPropagator().inject(carrier)
    return JSONResponse(carrier)


def test_a_request_passes_the_state_on_through_the_middleware(
    devkit_spans: CapturedSpans,
) -> None:
    devkit.init(sample_success_ratio=1.0)
    app = devkit.asgi(Starlette(routes=[Route("/out", _outbound)]))
    headers = {"traceparent": VALID, "tracestate": f" {HEADER} ,, rojo=again"}

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/out", headers=headers)

    response = asyncio.run(run())
    sent: dict[str, Any] = response.json()
    assert sent["tracestate"] == HEADER  # duplicates reduced, OWS and empty members gone
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    devkit.shutdown()
    (server,) = devkit_spans.spans
    assert server.context is not None
    assert format_tracestate(server.context.trace_state) == HEADER
