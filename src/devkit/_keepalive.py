"""A keep-alive ``http.client`` transport for OTLP/HTTP posts to a plain-HTTP collector.

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
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from devkit import _compat

if TYPE_CHECKING:
    from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
else:  # the exporter's transport layer, reached through the one seam; without it
    # (an older exporter) use_keep_alive never installs the classes below.
    BaseHTTPTransport, BaseHTTPResult = _compat.http_transport_base() or (object, object)

__all__ = ["KeepAliveTransport", "use_keep_alive"]

#: The most of a collector's response body read (OTLP answers with a few bytes; a
#: larger body is cut and the connection dropped rather than read without bound).
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Result(BaseHTTPResult):
    body: bytes = b""
    #: http.client's ``HTTPMessage``: case-insensitive lookups, as the base class asks.
    header_map: Any = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return cast("Mapping[str, str]", self.header_map)


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
        self._conn: http.client.HTTPConnection | None = None
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

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            conn = self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
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
