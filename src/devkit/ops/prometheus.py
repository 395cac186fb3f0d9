"""A small client of Prometheus's HTTP query API, for ``devkit slo status`` and the canary.

Instant queries (``/api/v1/query``) and range queries (``/api/v1/query_range``, for the
canary's per-interval samples), over the standard library's HTTP client: the command line
needs nothing installed to ask a question. Every failure is a
:class:`PrometheusError` naming the URL and what went wrong (unreachable, an HTTP error,
a query Prometheus rejected), so a pipeline's log says which Prometheus and why.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from devkit.exceptions import DevkitError

__all__ = ["Prometheus", "PrometheusError", "Sample", "SeriesRange"]

#: The longest answer read (a query devkit asks returns a few series).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class PrometheusError(DevkitError, RuntimeError):
    """Prometheus did not answer the query (the message names its URL)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status of Prometheus's error answer (400 for a query it cannot parse,
        #: 422 for one it cannot evaluate); None when it did not answer at all.
        self.status = status


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and value (NaN and infinities kept)."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class SeriesRange:
    """One series of a range query: its labels and its (Unix time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


class Prometheus:
    """Queries against one Prometheus (``http://host:9090``, a path prefix allowed)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PrometheusError(f"{url!r} is not an http(s) URL of a Prometheus server")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """The instant vector ``expr`` evaluates to (now, or at Unix time ``at``); a
        scalar comes back as one sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        kind, result = self._get("query", params, expr)
        if kind == "scalar":
            return [Sample({}, _float(result[1]))]
        if kind != "vector":
            raise PrometheusError(f"{self.url}: {expr} gave a {kind}, not an instant vector")
        return [Sample(dict(item["metric"]), _float(item["value"][1])) for item in result]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[SeriesRange]:
        """``expr`` evaluated every ``step`` seconds from ``start`` to ``end`` (Unix times)."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        kind, result = self._get("query_range", params, expr)
        if kind != "matrix":
            raise PrometheusError(f"{self.url}: {expr} gave a {kind}, not a range vector")
        return [
            SeriesRange(dict(item["metric"]), [(float(t), _float(v)) for t, v in item["values"]])
            for item in result
        ]

    def _get(self, endpoint: str, params: dict[str, str], expr: str) -> tuple[str, Any]:
        """(result type, result) of one API call; every failure a :class:`PrometheusError`."""
        address = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(address, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(
                f"{self.url}: {self._detail(exc)} for query {expr}", status=exc.code
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"{self.url} does not answer: {reason}") from None
        try:
            answer = json.loads(body)
            data = answer["data"]
            return str(data["resultType"]), data["result"]
        except (ValueError, KeyError, TypeError):
            raise PrometheusError(
                f"{self.url} answered something other than the query API"
            ) from None

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query that yields at most one series; None when it yields none."""
        samples = self.query(expr, at)
        if len(samples) > 1:
            raise PrometheusError(f"{self.url}: {expr} gave {len(samples)} series, not one")
        return samples[0].value if samples else None

    @staticmethod
    def _detail(exc: urllib.error.HTTPError) -> str:
        try:
            error = json.loads(exc.read(65536)).get("error")
        except (ValueError, AttributeError, OSError):
            error = None
        return f"HTTP {exc.code}" + (f" ({error})" if error else "")


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
