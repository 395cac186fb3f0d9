"""Downstream keep decisions, pulled upstream through the W3C ``trace`` server-timing metric.

Each service decides locally, at the end of its part of a trace, whether to keep it
(:mod:`devkit.tracing.sampling`). A service it called may keep its own part for a
reason the caller cannot see: an error it recovered from, its own lower slow threshold,
a keep from further down. Such a service answers with ``server-timing:
trace;desc=00-<trace-id>-<span-id>-01`` (``Core.server_timing``); the caller reads the
metric on the responses of its outbound calls and, when it names the caller's trace and
its sampled flag is set, keeps its part too (decision ``kept_downstream``), so the trace
arrives whole: each service up the call chain is told in turn.

The responses are read by the response hooks of OpenTelemetry's client instrumentations
(httpx sync and async, requests, urllib3, aiohttp), which devkit activates at
``init()``. A malformed metric, another trace's id, or a flag from a host not in
``DEVKIT_TRUSTED_TRACE_RESPONSES`` changes nothing; nothing here raises into the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from devkit import _errors
from devkit.tracing.propagation import SERVER_TIMING_HEADER, parse_trace_metric

__all__ = ["TraceResponses"]

_SAMPLED = 0x01


class TraceResponses:
    """Reads the ``trace`` metric of outbound responses; ``on_keep(trace_id)`` is called
    when a trusted service keeps the current trace."""

    def __init__(self, on_keep: Callable[[int], None], trusted: Sequence[str]) -> None:
        self._on_keep = on_keep
        hosts = tuple(host.lower() for host in trusted)
        self._everyone = "*" in hosts
        self._hosts = frozenset(h for h in hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".domain"

    def trusts(self, host: str | None) -> bool:
        if self._everyone:
            return True
        if not host:
            return False
        host = host.lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return (
            host in self._hosts
            or f"[{host}]" in self._hosts
            or any(host.endswith(suffix) for suffix in self._suffixes)
        )

    def observe(self, span: Any, host: str | None, values: Sequence[str] | None) -> None:
        """One response's ``server-timing`` field values, for the call traced by ``span``."""
        if not values or not (self._everyone or self.trusts(host)):
            return
        try:
            metric = parse_trace_metric(values)
            if metric is None:
                if any("trace" in value.lower() for value in values):
                    _errors.report("tracing", "malformed_trace_response")
                return
            trace_id, _span_id, flags = metric
            if not flags & _SAMPLED:
                return
            context = span.get_span_context()
            if context.trace_id == trace_id:
                self._on_keep(trace_id)
        except Exception as exc:
            _errors.report("tracing", "trace_response_failed", detail=f"{type(exc).__name__}")

    # -- the instrumentations' response hooks ---------------------------------------------

    def hooks(self) -> dict[str, dict[str, Any]]:
        """``instrument()`` keyword arguments per instrumentation entry-point name."""
        observe = self.observe

        def httpx_hook(span: Any, request: Any, response: Any) -> None:
            observe(span, _httpx_host(request), _httpx_values(response))

        async def httpx_async_hook(span: Any, request: Any, response: Any) -> None:
            observe(span, _httpx_host(request), _httpx_values(response))

        def requests_hook(span: Any, request: Any, response: Any) -> None:
            headers = getattr(response, "headers", None)
            value = headers.get(SERVER_TIMING_HEADER) if headers is not None else None
            observe(span, _url_host(getattr(request, "url", None)), [value] if value else None)

        def urllib3_hook(span: Any, pool: Any, response: Any) -> None:
            headers = getattr(response, "headers", None)
            values = _all_values(headers, "getlist")
            observe(span, getattr(pool, "host", None), values)

        def aiohttp_hook(span: Any, params: Any) -> None:
            response = getattr(params, "response", None)  # None: the call failed
            if response is None:
                return
            url = getattr(params, "url", None)
            observe(span, getattr(url, "host", None), _all_values(response.headers, "getall"))

        return {
            "httpx": {"response_hook": httpx_hook, "async_response_hook": httpx_async_hook},
            "requests": {"response_hook": requests_hook},
            "urllib3": {"response_hook": urllib3_hook},
            "aiohttp-client": {"response_hook": aiohttp_hook},
        }


def _httpx_host(request: Any) -> str | None:
    url = getattr(request, "url", None)
    if isinstance(url, tuple):  # the raw form: (scheme, host, port, target)
        host = url[1]
        return host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    return getattr(url, "host", None)


def _httpx_values(response: Any) -> list[str] | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:
        return list(get_list(SERVER_TIMING_HEADER))
    return _raw_values(headers)


def _raw_values(headers: Any) -> list[str]:
    """Values of ``server-timing`` in raw ``(name, value)`` byte pairs."""
    out = []
    for name, value in headers:
        if bytes(name).lower() == b"server-timing":
            out.append(bytes(value).decode("latin-1"))
    return out


def _all_values(headers: Any, method: str) -> list[str] | None:
    if headers is None:
        return None
    get_all = getattr(headers, method, None)
    if get_all is not None:
        return list(
            get_all(SERVER_TIMING_HEADER, [])
            if method == "getall"
            else get_all(SERVER_TIMING_HEADER)
        )
    value = headers.get(SERVER_TIMING_HEADER)
    return [value] if value else None


def _url_host(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
