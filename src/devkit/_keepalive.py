"""The OTLP/HTTP exporter's transport: a keep-alive connection to a plain-HTTP collector,
and what the collector answered each post, for the export queue's retries.

The OTLP/HTTP exporter posts through a ``requests`` session, which merges the
environment into every request (proxy variables, ``.netrc``, CA bundle variables) and
runs its adapter, hook and cookie machinery on every post, on the export thread but
under the GIL the request path needs (docs/benchmarks.md#the-export-connection). A
collector reached over plain HTTP without a proxy needs none of it. This
transport keeps one connection open and posts each batch over it; everything above the
transport stays the exporter's: endpoint, headers, compression, timeout, retries and
backoff.

:func:`use_keep_alive` installs it only where it changes nothing but the cost: an
``http://`` endpoint without credentials in it, the exporter's stock ``requests``
transport with a plain session, and neither a proxy variable nor a ``.netrc`` entry that
``requests`` would apply to that endpoint. HTTPS, proxies and custom sessions keep
``requests`` and its rules.

:func:`watch_answers` puts a :class:`WatchedTransport` around whichever transport the
exporter has. The exporter tells its caller only "failed"; devkit's export queue
(``devkit._batch``) must know whether the failure was transient (keep the batch and try
again later) or final (drop and count it), and how long the collector asked it to wait.
The exporter honours a ``Retry-After`` of any length that fits in its timeout and drops
the batch at once when it does not; the watched transport caps the header at
:data:`RETRY_AFTER_CAP_S` first, so no collector can stall the export for longer
(docs/reliability.md#retries).
"""

from __future__ import annotations

import email.utils
import http.client
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from devkit import _compat

if TYPE_CHECKING:
    from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
else:  # the exporter's transport layer, reached through the one seam; without it
    # (an older exporter) use_keep_alive never installs the classes below.
    BaseHTTPTransport, BaseHTTPResult = _compat.http_transport_base() or (object, object)

__all__ = [
    "RETRY_AFTER_CAP_S",
    "Answer",
    "KeepAliveTransport",
    "WatchedTransport",
    "use_keep_alive",
    "watch_answers",
]

#: The most of a collector's response body read (OTLP answers with a few bytes; a
#: larger body is cut and the connection dropped rather than read without bound).
MAX_RESPONSE_BYTES = 64 * 1024

#: The longest wait a collector's ``Retry-After`` imposes before a batch is tried again,
#: in seconds: a longer value is honoured as this one. A collector that sheds load asks
#: for seconds; a header asking for an hour (a misconfigured proxy, a hostile endpoint)
#: must not stop the export for an hour while the bounded queue drops everything new.
RETRY_AFTER_CAP_S = 10.0

#: The statuses the OTLP/HTTP specification has clients retry; every other 4xx and 5xx
#: is final.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class _Result(BaseHTTPResult):
    body: bytes = b""
    #: http.client's ``HTTPMessage``: case-insensitive lookups, as the base class asks.
    header_map: Any = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return cast("Mapping[str, str]", self.header_map)


class _Headers(Mapping[str, str]):
    """Response headers with case-insensitive names, as ``BaseHTTPResult`` promises."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._lower = {str(name).lower(): value for name, value in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._lower[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lower)

    def __len__(self) -> int:
        return len(self._lower)


class _Connection(http.client.HTTPConnection):
    """``http.client``'s connection, sending a request's head and body in one write.

    The stock connection writes the head, then the body: two writes that each let go of
    the GIL, and a request thread waiting for it takes it each time, for up to its 5 ms
    switch interval (docs/benchmarks.md#the-export-connection).
    """

    #: The head, held until the body comes (set by :meth:`hold_head`).
    _head: bytes | None = None
    _hold = False

    def hold_head(self) -> None:
        """Keep the next write (the head of a request with a body) for the one after."""
        self._hold = True

    def send(self, data: Any) -> None:
        if self._hold:
            self._hold = False
            self._head = bytes(data)
            return
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        super().send(data)


class KeepAliveTransport(BaseHTTPTransport):
    """Posts to one ``http://`` endpoint over one reused connection.

    Used from the export thread only. Any other URL goes to ``fallback`` (the
    exporter's own transport). A failed request drops the connection, so the client's
    immediate retry of a connection error reconnects (a collector closing an idle
    keep-alive connection costs one reconnect, not a lost batch). A forked child opens
    its own connection instead of writing into the parent's socket.
    """

    def __init__(self, endpoint: str, fallback: BaseHTTPTransport) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname or parts.username is not None:
            # Credentials in the URL are for requests to send as basic auth: not here.
            raise ValueError("not a plain-HTTP endpoint without credentials")
        self._url = endpoint
        self._host = parts.hostname
        self._port = parts.port or 80
        self._target = parts.path or "/"
        if parts.query:
            self._target += "?" + parts.query
        self._fallback = fallback
        self._conn: _Connection | None = None
        self._pid = os.getpid()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        if url != self._url:
            return self._fallback.request(method, url, headers=headers, timeout=timeout, data=data)
        try:
            conn = self._connection(timeout)
            if isinstance(data, bytes) and data:  # http.client writes it in one piece
                conn.hold_head()
            conn.request(method, self._target, body=data, headers=headers or {})
            response = conn.getresponse()
            body = response.read(MAX_RESPONSE_BYTES)
            if response.will_close or not response.isclosed():
                self._drop()  # closing, or a body larger than the bound: start afresh
            return _Result(
                status_code=response.status,
                reason=response.reason,
                body=body,
                header_map=response.msg,
            )
        except Exception as exc:
            self._drop()
            return _Result(error=exc)

    def _connection(self, timeout: float | None) -> _Connection:
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._conn = _Connection(self._host, self._port, timeout=timeout)
            self._pid = os.getpid()
        elif conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.timeout = timeout
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()

    def is_connection_error(self, exception: Exception | None) -> bool:
        if isinstance(exception, (OSError, http.client.HTTPException)):
            return True
        return self._fallback.is_connection_error(exception)

    def close(self) -> None:
        self._drop()
        self._fallback.close()


def use_keep_alive(exporter: Any) -> bool:
    """Give ``exporter`` (an OTLP/HTTP span exporter) a :class:`KeepAliveTransport`.

    Returns whether it did: only when the change is invisible apart from the cost (see
    the module docstring). Anything unexpected in the exporter leaves it as it was.
    """
    parts = _compat.otlp_client_transport(exporter)
    if parts is None or _compat.http_transport_base() is None:
        return False
    endpoint, transport = parts
    if not endpoint.startswith("http://"):
        return False
    try:
        import requests
        import requests.utils
    except ImportError:
        return False
    session = _compat.requests_session(transport)
    if type(session) is not requests.Session or session.auth is not None or session.proxies:
        return False
    if session.trust_env and (
        requests.utils.select_proxy(endpoint, requests.utils.get_environ_proxies(endpoint))
        or requests.utils.get_netrc_auth(endpoint)
    ):
        return False
    try:
        _compat.replace_otlp_transport(exporter, KeepAliveTransport(endpoint, fallback=transport))
    except ValueError:
        return False
    return True


# -- what the collector answered -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """The collector's answer to one failed post.

    ``retryable``: the failure is transient (no answer at all: refused, reset, timed out;
    or a 429, 502, 503 or 504) and the batch is worth keeping. ``retry_after_s``: the
    collector's ``Retry-After``, at most :data:`RETRY_AFTER_CAP_S`, or None.
    """

    retryable: bool
    retry_after_s: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP-date), never
    negative; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class WatchedTransport(BaseHTTPTransport):
    """Posts through ``inner`` and keeps the answer to the last post in :attr:`last`
    (None after a success), capping ``Retry-After`` at :data:`RETRY_AFTER_CAP_S` on the
    way to the exporter. Used from the export thread only."""

    def __init__(self, inner: BaseHTTPTransport) -> None:
        self.inner = inner
        #: The answer to the last post when it failed; the export queue resets it.
        self.last: Answer | None = None

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        result = self.inner.request(method, url, headers=headers, timeout=timeout, data=data)
        try:
            return self._noted(result)
        except Exception:  # an odd result object: the exporter judges it alone
            self.last = Answer(retryable=False)
            return result

    def _noted(self, result: BaseHTTPResult) -> BaseHTTPResult:
        status = result.status_code
        if status is None:
            self.last = Answer(retryable=result.error is not None)
            return result
        if 200 <= status < 400:
            self.last = None
            return result
        if status not in RETRYABLE_STATUSES:
            self.last = Answer(retryable=False)
            return result
        asked = parse_retry_after(result.headers().get("retry-after"))
        if asked is None or asked <= RETRY_AFTER_CAP_S:
            self.last = Answer(retryable=True, retry_after_s=asked)
            return result
        self.last = Answer(retryable=True, retry_after_s=RETRY_AFTER_CAP_S)
        capped = {k: v for k, v in result.headers().items() if k.lower() != "retry-after"}
        capped["retry-after"] = f"{RETRY_AFTER_CAP_S:g}"
        return _Result(
            status_code=status,
            reason=result.reason,
            error=result.error,
            body=result.content(),
            header_map=_Headers(capped),
        )

    def is_connection_error(self, exception: Exception | None) -> bool:
        return self.inner.is_connection_error(exception)

    def close(self) -> None:
        self.inner.close()


def watch_answers(exporter: Any) -> WatchedTransport | None:
    """The :class:`WatchedTransport` of an OTLP/HTTP span or log exporter (or of the one
    devkit's ``FastOTLPExporter`` wraps, its ``exporter``), put in place on first call;
    None for any other exporter, whose failures then count as final."""
    if _compat.http_transport_base() is None:
        return None
    for candidate in (exporter, getattr(exporter, "exporter", None)):
        parts = _compat.otlp_client_transport(candidate) if candidate is not None else None
        if parts is None:
            continue
        transport = parts[1]
        if isinstance(transport, WatchedTransport):
            return transport
        watched = WatchedTransport(transport)
        _compat.replace_otlp_transport(candidate, watched)
        return watched
    return None
