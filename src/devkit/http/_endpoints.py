"""The answers devkit gives itself: ``/metrics`` and the probes, for every adapter.

The ASGI, WSGI and Django adapters and the ``DEVKIT_METRICS_PORT`` server all ask
:class:`Endpoints` for an :class:`Answer` and only write it out their own way, so paths,
status codes, content types and headers are decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import NamedTuple

from devkit import _errors
from devkit.config import PROBE_KINDS, Settings
from devkit.health import HealthRegistry
from devkit.metrics import RedMetrics, exposition, scrape_registry

__all__ = ["Answer", "Endpoints"]

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
        ]


_NOT_FOUND = Answer(404, "text/plain", b"not found\n")


class Endpoints:
    """Routes ``/metrics`` and ``{health_path}/{startup,ready,live}`` to their answers."""

    __slots__ = ("metrics_path", "prefixes", "_probes", "_metrics", "_health", "_flush")

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
        health_prefix = settings.health_path + "/"
        #: Every path devkit answers starts with one of these: one ``str.startswith``
        #: tells an application request apart before :meth:`owns` looks closer.
        self.prefixes = (
            (health_prefix,)
            if self.metrics_path is None
            else (
                self.metrics_path,
                health_prefix,
            )
        )
        self._probes = {health_prefix + kind: kind for kind in PROBE_KINDS}
        self._metrics = metrics
        self._health = health
        #: Writes what finished requests still owe before the metrics are read.
        self._flush = flush

    def owns(self, path: str) -> bool:
        """Whether devkit answers ``path`` itself (adapters test :attr:`prefixes` first)."""
        return path == self.metrics_path or path in self._probes

    def answer(self, path: str, accept: str | None = None) -> Answer:
        """The answer for ``path``, from any thread (WSGI, Django, the metrics port).

        ``accept`` is the scraper's ``Accept`` header (OpenMetrics or classic text).
        Never raises; a path that is not devkit's gets 404.
        """
        if path == self.metrics_path:
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

    async def answer_async(self, path: str, accept: str | None = None) -> Answer:
        """:meth:`answer` on the server's event loop (ASGI): async checks run on it."""
        kind = self._probes.get(path)
        if kind is None or self._health is None:
            return self.answer(path, accept)
        try:
            result = await self._health.evaluate_async(kind)
        except Exception as exc:
            _errors.report("health", "probe_failed", exc)
            return Answer(503, _JSON, _PROBE_FAILED)
        return Answer(result.http_status, _JSON, result.body())

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
