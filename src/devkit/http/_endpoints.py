"""The answers devkit gives itself: ``/metrics`` and the probes, for every adapter.

The ASGI, WSGI and Django adapters and the ``DEVKIT_METRICS_PORT`` server all ask
:class:`Endpoints` for an :class:`Answer` and only write it out their own way, so paths,
status codes, content types and headers are decided in one place.

With ``DEVKIT_METRICS_TOKEN`` set, ``/metrics`` answers 401 with ``WWW-Authenticate:
Bearer`` (RFC 6750) unless the request carries ``Authorization: Bearer <token>``; the
token is compared in constant time. The probes stay open: kubelet's ``httpGet`` probes
cannot send a token read from a Secret, and a probe body says no more than pass or fail
(check errors are redacted and cut, docs/kubernetes.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import ClassVar, NamedTuple

from devkit import _errors
from devkit.config import PROBE_KINDS, Settings
from devkit.health import HealthRegistry
from devkit.metrics import RedMetrics, exposition, scrape_registry

__all__ = ["Answer", "Endpoints", "authorization_header"]

_PROBE_FAILED = b'{"status":"fail","checks":{}}'
_JSON = "application/json"


class Answer(NamedTuple):
    """A complete response: status, content type, body."""

    status: int
    content_type: str
    body: bytes

    @property
    def status_line(self) -> str:
        """``"200 OK"``: the WSGI status string."""
        try:
            return f"{self.status} {HTTPStatus(self.status).phrase}"
        except ValueError:
            return f"{self.status} Unknown"

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Content type and length; never cached (a scrape or probe wants the present)."""
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            *self.extra_headers,
        ]

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers beyond the three every answer has (the 401's challenge)."""
        return ()


class _Unauthorized(Answer):
    """401 for a request without the token, with the RFC 6750 challenge (section 3: no
    error code when the request had no credentials)."""

    __slots__ = ()
    challenge: ClassVar[str] = 'Bearer realm="metrics"'

    @property
    def extra_headers(self) -> tuple[tuple[str, str], ...]:
        return (("WWW-Authenticate", self.challenge),)


class _InvalidToken(_Unauthorized):
    """401 for a request with a wrong token."""

    __slots__ = ()
    challenge: ClassVar[str] = 'Bearer realm="metrics", error="invalid_token"'


_NOT_FOUND = Answer(404, "text/plain", b"not found\n")
_NO_TOKEN = _Unauthorized(401, "text/plain", b"unauthorized\n")
_BAD_TOKEN = _InvalidToken(401, "text/plain", b"unauthorized\n")


def authorization_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Authorization`` value of raw ASGI headers (the first), or None."""
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class Endpoints:
    """Routes ``/metrics`` and ``{health_path}/{startup,ready,live}`` to their answers."""

    __slots__ = ("metrics_path", "prefixes", "_probes", "_metrics", "_health", "_flush", "_token")

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: RedMetrics | None,
        health: HealthRegistry | None,
        flush: Callable[[], None],
        serve_metrics: bool = True,
    ) -> None:
        #: The exposition path, or None where it is served elsewhere (its own port).
        self.metrics_path = settings.metrics_path if serve_metrics else None
        # The application's port leaves the probes to the metrics port when asked to
        # (DEVKIT_HEALTH_ON_APP_PORT=false): then it answers nothing itself.
        serve_probes = serve_metrics or settings.health_on_app_port
        health_prefix = settings.health_path + "/"
        #: Every path devkit answers starts with one of these: one ``str.startswith``
        #: tells an application request apart before :meth:`owns` looks closer.
        prefixes: list[str] = [] if self.metrics_path is None else [self.metrics_path]
        if serve_probes:
            prefixes.append(health_prefix)
        self.prefixes = tuple(prefixes)
        self._probes = {health_prefix + kind: kind for kind in PROBE_KINDS} if serve_probes else {}
        self._metrics = metrics
        self._health = health
        #: Writes what finished requests still owe before the metrics are read.
        self._flush = flush
        #: What ``/metrics`` requires after ``Bearer `` (``DEVKIT_METRICS_TOKEN``), or None.
        token = settings.metrics_token
        self._token = token.encode("ascii") if token else None

    def owns(self, path: str) -> bool:
        """Whether devkit answers ``path`` itself (adapters test :attr:`prefixes` first)."""
        return path == self.metrics_path or path in self._probes

    def answer(
        self, path: str, accept: str | None = None, authorization: str | None = None
    ) -> Answer:
        """The answer for ``path``, from any thread (WSGI, Django, the metrics port).

        ``accept`` is the scraper's ``Accept`` header (OpenMetrics or classic text),
        ``authorization`` its ``Authorization`` header (read only with a metrics token).
        Never raises; a path that is not devkit's gets 404.
        """
        if path == self.metrics_path:
            if self._token is not None:
                refused = self._refusal(authorization)
                if refused is not None:
                    return refused
            return self._metrics_answer(accept)
        kind = self._probes.get(path)
        if kind is None:
            return _NOT_FOUND
        if self._health is None:
            return Answer(503, _JSON, _PROBE_FAILED)
        try:
            result = self._health.evaluate(kind)
        except Exception as exc:
            _errors.report("health", "probe_failed", exc)
            return Answer(503, _JSON, _PROBE_FAILED)
        return Answer(result.http_status, _JSON, result.body())

    async def answer_async(
        self, path: str, accept: str | None = None, authorization: str | None = None
    ) -> Answer:
        """:meth:`answer` on the server's event loop (ASGI): async checks run on it."""
        kind = self._probes.get(path)
        if kind is None or self._health is None:
            return self.answer(path, accept, authorization)
        try:
            result = await self._health.evaluate_async(kind)
        except Exception as exc:
            _errors.report("health", "probe_failed", exc)
            return Answer(503, _JSON, _PROBE_FAILED)
        return Answer(result.http_status, _JSON, result.body())

    def _refusal(self, authorization: str | None) -> Answer | None:
        """None when ``authorization`` is ``Bearer <the token>``, else the 401 answer.

        The scheme is case-insensitive (RFC 7235); the token is compared with
        ``hmac.compare_digest``, whose time does not depend on where the values differ.
        """
        assert self._token is not None
        if not authorization:
            return _NO_TOKEN
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return _NO_TOKEN
        offered = credentials.strip(" \t").encode("utf-8", "replace")
        return None if hmac.compare_digest(offered, self._token) else _BAD_TOKEN

    def _metrics_answer(self, accept: str | None) -> Answer:
        metrics = self._metrics
        if metrics is None:
            return Answer(404, "text/plain", b"metrics disabled\n")
        self._flush()
        try:
            metrics.prepare_scrape()
            body, content_type = exposition(scrape_registry(metrics), accept)
        except Exception as exc:
            _errors.report("metrics", "exposition_failed", exc)
            return Answer(500, "text/plain", b"exposition failed\n")
        return Answer(200, content_type, body)
