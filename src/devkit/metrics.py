"""RED metrics on an injected registry, exposition with content negotiation, exemplars.

Cardinality is bounded by construction: ``route`` is a route template or
``<unmatched>``, ``method`` is one of the standard methods or ``_OTHER``, and
``status_code`` is an integer in 100..599. Label children are cached per
``(method, route, status_code)`` so a request pays for two increments and one
observation, not for label resolution.

Exemplars (``{trace_id="<32 hex>"}``) are attached only for traces the sampler kept, so a
dashboard's exemplar always links to a trace that exists. prometheus-client drops
exemplars in multiprocess mode (client_python#648); :class:`ExemplarStore` keeps the
latest exemplar per series in each process, persists it next to the multiprocess files
and merges them at scrape time, so gunicorn workers keep their exemplars too.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from devkit import _compat
from devkit.conventions import (
    BUILD_INFO,
    DEFAULT_BUCKETS,
    DURATION,
    ERRORS_TOTAL,
    IN_PROGRESS,
    INTERNAL_ERRORS_TOTAL,
    LOG_RECORDS_DROPPED_TOTAL,
    LOOP_LAG,
    REQUEST_LABELS,
    REQUESTS_TOTAL,
    SPANS_DROPPED_TOTAL,
    STANDARD_METHODS,
    TRACES_SAMPLED_TOTAL,
    UNMATCHED_ROUTE,
    buckets_for,
    le,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "STANDARD_METHODS",
    "UNMATCHED",
    "ExemplarStore",
    "ObservedRequest",
    "RedMetrics",
    "buckets_for",
    "exposition",
    "mark_process_dead",
    "scrape_registry",
]

UNMATCHED = UNMATCHED_ROUTE
_MAX_CACHED_CHILDREN = 10_000
_IN_PROGRESS = (IN_PROGRESS, "HTTP requests being served.")
_EXEMPLAR_FILE_PREFIX = "devkit-exemplars-"
_EXEMPLAR_FLUSH_INTERVAL_S = 1.0
_EXEMPLAR_MAX_AGE_S = 3600.0


class ExemplarStore:
    """Latest exemplar per series, kept in-process and persisted in multiprocess mode."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._latest: dict[str, list[Any]] = {}
        self._dirty = False
        self._last_flush = 0.0

    def record(self, key: str, trace_id: str, value: float) -> None:
        now = time.time()
        with self._lock:
            self._latest[key] = [trace_id, value, now]
            self._dirty = True
            due = (
                self._directory is not None and now - self._last_flush >= _EXEMPLAR_FLUSH_INTERVAL_S
            )
        if due:
            self.flush()

    def after_fork_in_child(self) -> None:
        # A lock held by one of the parent's threads at the fork stays held in the child.
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Write this process's exemplars next to the multiprocess files (atomic rename)."""
        if self._directory is None:
            return
        with self._lock:
            if not self._dirty:
                return
            payload = orjson.dumps(self._latest)
            self._dirty = False
            self._last_flush = time.time()
        path = os.path.join(self._directory, f"{_EXEMPLAR_FILE_PREFIX}{os.getpid()}.json")
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, path)
        except OSError:
            from devkit import _errors

            _errors.report("metrics", "exemplar_write_failed")

    def merged(self) -> dict[str, list[Any]]:
        """Every process's latest exemplar per series (the newest wins)."""
        with self._lock:
            result = dict(self._latest)
        if self._directory is None:
            return result
        now = time.time()
        for path in glob.glob(os.path.join(self._directory, _EXEMPLAR_FILE_PREFIX + "*.json")):
            try:
                if now - os.path.getmtime(path) > _EXEMPLAR_MAX_AGE_S:
                    os.remove(path)
                    continue
                with open(path, "rb") as fh:
                    data = orjson.loads(fh.read())
            except (OSError, orjson.JSONDecodeError):
                continue
            for key, entry in data.items():
                if key not in result or entry[2] > result[key][2]:
                    result[key] = entry
        return result


class ObservedRequest(Protocol):
    """What :meth:`RedMetrics.observe` reads of a finished request (``devkit.http``'s
    request record)."""

    method_label: str
    route: str
    status: int
    duration: float
    error: bool
    #: The trace id (32 hex) of a kept trace, for the exemplars; None otherwise.
    exemplar: str | None
    #: What :meth:`RedMetrics.request_started` returned, or None.
    in_progress: Any


def _exemplars(trace_id: str, duration_s: float) -> tuple[Exemplar, Exemplar]:
    """What ``inc(1, exemplar)`` and ``observe(duration_s, exemplar)`` store for a kept
    trace, without re-validating a label devkit wrote (a 32-hex trace id)."""
    labels, now = {"trace_id": trace_id}, time.time()
    return Exemplar(labels, 1, now), Exemplar(labels, duration_s, now)


def _series_key(name: str, labels: dict[str, str]) -> str:
    return name + "|" + "|".join(f"{k}={labels[k]}" for k in sorted(labels))


class RedMetrics:
    """The RED metrics of HTTP requests, registered on an injected registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        exemplars: ExemplarStore | None = None,
        multiprocess_dir: str | None = None,
        build_info: Mapping[str, str] | None = None,
    ) -> None:
        """``build_info``: the labels of ``devkit_build_info`` (service, version,
        environment, devkit_version); without it the metric is not exposed."""
        self.registry = registry
        #: prometheus-client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``).
        self.multiprocess_dir = multiprocess_dir
        self.multiprocess = multiprocess_dir is not None
        #: Counts requests that finished but are not counted yet whenever the registry
        #: is read (:meth:`count_waiting_with`); registered first, so it runs before any
        #: of devkit's metrics is collected.
        self._waiting = _CountWaiting()
        registry.register(self._waiting)
        labels = REQUEST_LABELS
        self.requests = Counter(REQUESTS_TOTAL, "HTTP requests served.", labels, registry=registry)
        self.errors = Counter(
            ERRORS_TOTAL,
            "HTTP requests that failed: 5xx responses and unhandled exceptions (as 500).",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            DURATION,
            "Time from request start to the end of the response.",
            labels,
            buckets=buckets,
            registry=registry,
        )
        #: Held by every write of the request metrics' values (``_compat.plain_value``)
        #: and of the in-progress counts.
        self._lock = threading.Lock()
        #: Requests in progress per method, in one process: devkit's own counts, exposed
        #: by a collector of its own (a dict write under the lock above instead of a
        #: gauge child's). Workers of a multiprocess server share a livesum gauge.
        self._live: dict[str, float] | None = None
        self._shared_gauge: Gauge | None = None
        self.in_progress: Collector
        if self.multiprocess:
            self.in_progress = self._shared_gauge = Gauge(
                *_IN_PROGRESS, ("method",), registry=registry, multiprocess_mode="livesum"
            )
        else:
            self._live = {}
            self.in_progress = _LiveGauge(self._live, self._lock)
            registry.register(self.in_progress)
        self.loop_lag = Histogram(
            LOOP_LAG,
            "Delay of a timer on the server's asyncio event loop (saturation).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.internal_errors = Counter(
            INTERNAL_ERRORS_TOTAL,
            "Failures inside devkit that were counted instead of raised.",
            ("component", "reason"),
            registry=registry,
        )
        self.spans_dropped = Counter(
            SPANS_DROPPED_TOTAL,
            "Spans dropped by devkit's bounded buffers.",
            ("reason",),
            registry=registry,
        )
        self.log_records_dropped = Counter(
            LOG_RECORDS_DROPPED_TOTAL,
            "Log records the OTLP log export dropped (stdout still has them).",
            ("reason",),
            registry=registry,
        )
        self.traces_sampled = Counter(
            TRACES_SAMPLED_TOTAL,
            "Tail-sampling decisions by outcome.",
            ("decision",),
            registry=registry,
        )
        self._bucket_bounds = [*sorted(buckets), float("inf")]
        #: Run before every scrape: parts of devkit that count in bulk hand their counts over.
        self.before_scrape: list[Callable[[], None]] = []
        self._exemplars = exemplars if exemplars is not None else ExemplarStore(multiprocess_dir)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._error_children: dict[tuple[str, str, int], Any] = {}
        self._in_progress_children: dict[str, Any] = {}
        # Reasons and decisions are a small fixed set of devkit's own strings.
        self._drop_children: dict[str, Any] = {}
        self._decision_children: dict[str, Any] = {}
        #: ``devkit_build_info``: in multiprocess mode it is served beside the merged
        #: workers' metrics (every worker has the same).
        self.build_info = _BuildInfo(build_info) if build_info is not None else None
        if self.build_info is not None:
            registry.register(self.build_info)
        #: Gauges read when scraped (:meth:`add_gauge`); in multiprocess mode the scraped
        #: worker's are served beside the merged metrics.
        self.process_gauges: list[Collector] = []
        self._collectors: list[Collector] = [
            self._waiting,
            *([self.build_info] if self.build_info is not None else []),
            self.requests,
            self.errors,
            self.duration,
            self.in_progress,
            self.loop_lag,
            self.internal_errors,
            self.spans_dropped,
            self.log_records_dropped,
            self.traces_sampled,
        ]

    @property
    def exemplars(self) -> ExemplarStore:
        return self._exemplars

    def add_gauge(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Mapping[tuple[str, ...], float | None]],
        labels: Sequence[str] = (),
    ) -> None:
        """A gauge whose samples ``read()`` returns when scraped (label values -> value;
        None leaves that sample out). Nothing is done per request."""
        gauge = _CallbackGauge(name, documentation, tuple(labels), read)
        self.registry.register(gauge)
        self.process_gauges.append(gauge)
        self._collectors.append(gauge)

    def prepare_scrape(self) -> None:
        """Bring bulk-counted values up to date (called by every reader of the registry)."""
        for hook in list(self.before_scrape):
            try:
                hook()
            except Exception as exc:
                from devkit import _errors

                _errors.report("metrics", "before_scrape_failed", exc)

    @property
    def counts_later(self) -> bool:
        """Whether a request may be counted after it finished, when its books are done
        in a batch, because every read of the registry counts the waiting ones first
        (:meth:`count_waiting_with`). Not in multiprocess mode: there the counts are
        in files that outlive a worker killed before its batch."""
        return not self.multiprocess

    def count_waiting_with(self, count: Callable[[], None] | None) -> None:
        """Have ``count`` called before each read of the registry (None: no more)."""
        self._waiting.count = count

    def request_started(self, method: str) -> Any:
        """+1 on the in-progress gauge of ``method``; the record keeps the result for
        :meth:`observe`, which takes it back down."""
        live = self._live
        if live is not None:
            with self._lock:
                live[method] = live.get(method, 0.0) + 1.0
            return method
        child = self._in_progress_children.get(method)
        if child is None:
            assert self._shared_gauge is not None
            child = self._in_progress_children[method] = self._shared_gauge.labels(method)
        child.inc()
        return child

    def observe(self, request: ObservedRequest) -> None:
        """Record one finished request; its exemplar only when its trace was kept."""
        method, route, status_code = request.method_label, request.route, request.status
        key = (method, route, status_code)
        children = self._children.get(key)
        if children is None:
            children = self._new_children(method, route, str(status_code))
            if len(self._children) < _MAX_CACHED_CHILDREN:
                self._children[key] = children
        duration_s = request.duration
        trace_id = request.exemplar
        started = request.in_progress
        live = self._live
        plain = children[2]
        if plain is not None:
            # One lock for the whole request instead of one per value object: every
            # devkit write to these values holds it (docs/benchmarks.md#red-metrics).
            kept = None
            if trace_id is not None:
                kept = _exemplars(trace_id, duration_s)
            with self._lock:
                plain(duration_s, kept)
                if live is not None and started is not None:
                    live[started] -= 1.0
        else:
            with self._lock:
                if trace_id is None:
                    children[0].inc()
                    children[1].observe(duration_s)
                else:
                    exemplar = {"trace_id": trace_id}
                    children[0].inc(1, exemplar)
                    children[1].observe(duration_s, exemplar)
                if started is not None:
                    if live is not None:
                        live[started] -= 1.0
                    else:
                        started.dec()
            if trace_id is not None and self.multiprocess:
                self._record_multiprocess_exemplars(
                    method, route, status_code, duration_s, trace_id
                )
        if request.error:
            # Created on the first error only: no zero series for every successful route.
            errors = self._error_children.get(key)
            if errors is None:
                errors = self.errors.labels(method, route, str(status_code))
                if len(self._error_children) < _MAX_CACHED_CHILDREN:
                    self._error_children[key] = errors
            errors.inc()

    def observe_many(self, requests: Iterable[ObservedRequest]) -> None:
        """:meth:`observe` for requests in a row (a batch of WSGI books): those without
        an error whose values devkit writes directly under one lock for them all."""
        children_of = self._children
        live = self._live
        rest: list[ObservedRequest] = []
        with self._lock:
            for request in requests:
                children = children_of.get((request.method_label, request.route, request.status))
                plain = children[2] if children is not None else None
                if plain is None or request.error:
                    rest.append(request)
                    continue
                duration_s = request.duration
                trace_id = request.exemplar
                kept = None
                if trace_id is not None:
                    kept = _exemplars(trace_id, duration_s)
                plain(duration_s, kept)
                started = request.in_progress
                if live is not None and started is not None:
                    live[started] -= 1.0
        # A new label set, an error, or values of another kind: one by one, each on its
        # own (one that fails is counted as an internal error, not the others).
        for request in rest:
            try:
                self.observe(request)
            except Exception as exc:
                from devkit import _errors

                _errors.report("metrics", "count_failed", exc)

    def add_exemplar(self, request: ObservedRequest) -> None:
        """Link a request :meth:`observe` counted earlier to its trace, kept since
        (``request.exemplar``): the exemplars ``observe`` would have set, nothing counted.
        WSGI requests end their span after their metrics are counted (docs/logs.md)."""
        trace_id = request.exemplar
        if trace_id is None:
            return
        method, route, status_code = request.method_label, request.route, request.status
        children = self._children.get((method, route, status_code))
        if children is None:
            children = self._new_children(method, route, str(status_code))
        duration_s = request.duration
        with self._lock:
            _compat.set_exemplars(
                children[0], children[1], duration_s, _exemplars(trace_id, duration_s)
            )
        if self.multiprocess:
            self._record_multiprocess_exemplars(method, route, status_code, duration_s, trace_id)

    def _new_children(self, method: str, route: str, status: str) -> tuple[Any, Any, Any]:
        """(counter child, histogram child, their plain values or None)."""
        requests = self.requests.labels(method, route, status)
        duration = self.duration.labels(method, route, status)
        return requests, duration, _compat.plain_values(requests, duration)

    def _record_multiprocess_exemplars(
        self, method: str, route: str, status_code: int, duration_s: float, trace_id: str
    ) -> None:
        labels = {"method": method, "route": route, "status_code": str(status_code)}
        self._exemplars.record(_series_key(REQUESTS_TOTAL, labels), trace_id, 1.0)
        for bound in self._bucket_bounds:
            if duration_s <= bound:
                self._exemplars.record(
                    _series_key(DURATION + "_bucket", {**labels, "le": le(bound)}),
                    trace_id,
                    duration_s,
                )
                break

    def count_internal_error(self, component: str, reason: str) -> None:
        self.internal_errors.labels(component, reason).inc()

    def count_dropped_spans(self, reason: str, n: int = 1) -> None:
        child = self._drop_children.get(reason)
        if child is None:
            child = self._drop_children[reason] = self.spans_dropped.labels(reason)
        child.inc(n)

    def count_dropped_log_records(self, reason: str, n: int = 1) -> None:
        # Off the request path (the export thread, or a full queue): no child cache.
        self.log_records_dropped.labels(reason).inc(n)

    def count_trace_decision(self, decision: str, n: int = 1) -> None:
        """Called once per request (the root span's decision): label children cached."""
        child = self._decision_children.get(decision)
        if child is None:
            child = self._decision_children[decision] = self.traces_sampled.labels(decision)
        child.inc(n)

    def after_fork_in_child(self) -> None:
        """Start a forked child's own books: the requests in progress were the parent's
        (its threads are not in the child, so their counts would never come down), and a
        lock one of them held at the fork would stay held for ever."""
        self._lock = threading.Lock()
        if self._live is not None:
            self._live.clear()
            if isinstance(self.in_progress, _LiveGauge):
                self.in_progress.reset(self._live, self._lock)
        self._exemplars.after_fork_in_child()

    def unregister(self) -> None:
        for collector in self._collectors:
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass


def _family(counter: str) -> str:
    """A counter's family name, as prometheus-client reports it (without ``_total``)."""
    return counter.removesuffix("_total")


class _BuildInfo(Collector):
    """``devkit_build_info{service, version, environment, devkit_version} 1``."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._labels = dict(labels)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            BUILD_INFO,
            "The service's name, version and environment, and devkit's version (always 1).",
            labels=list(self._labels),
        )
        family.add_metric(list(self._labels.values()), 1.0)
        yield family


class _CallbackGauge(Collector):
    """A gauge family read when scraped (see :meth:`RedMetrics.add_gauge`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], Mapping[tuple[str, ...], float | None]],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        try:
            samples = self._read()
        except Exception as exc:
            from devkit import _errors

            _errors.report("metrics", "gauge_read_failed", exc)
            samples = {}
        for values, value in samples.items():
            if value is not None:
                family.add_metric(values, value)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, labels=self._labels)


class _CountWaiting(Collector):
    """No metric: a collect counts what waits to be counted (``RedMetrics.counts_later``)."""

    def __init__(self) -> None:
        self.count: Callable[[], None] | None = None

    def collect(self) -> Iterable[Metric]:
        count = self.count
        if count is not None:
            count()
        return ()

    def describe(self) -> Iterable[Metric]:
        return ()


class _LiveGauge(Collector):
    """``http_requests_in_progress{method}`` from devkit's own counts (one process)."""

    def __init__(self, live: dict[str, float], lock: threading.Lock) -> None:
        self._live = live
        self._lock = lock

    def reset(self, live: dict[str, float], lock: threading.Lock) -> None:
        self._live = live
        self._lock = lock

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(*_IN_PROGRESS, labels=("method",))
        with self._lock:
            counts = sorted(self._live.items())
        for method, value in counts:
            family.add_metric((method,), value)
        yield family

    def describe(self) -> Iterable[Metric]:
        # Registered with a name, so another collector cannot take it.
        yield GaugeMetricFamily(*_IN_PROGRESS, labels=("method",))


class _MultiprocessExemplarCollector(Collector):
    """Aggregates every worker's samples and re-attaches the workers' exemplars."""

    def __init__(self, directory: str, store: ExemplarStore) -> None:
        self._inner = MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
        self._store = store

    def collect(self) -> Iterable[Metric]:
        self._store.flush()
        exemplars = self._store.merged()
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if exemplars and metric.name in (_family(REQUESTS_TOTAL), DURATION):
                metric.samples = [self._attach(s, exemplars) for s in metric.samples]
            yield metric

    @staticmethod
    def _attach(sample: Sample, exemplars: dict[str, list[Any]]) -> Sample:
        entry = exemplars.get(_series_key(sample.name, sample.labels))
        if entry is None:
            return sample
        trace_id, value, ts = entry
        return sample._replace(exemplar=Exemplar({"trace_id": trace_id}, value, ts))


def scrape_registry(metrics: RedMetrics) -> Collector:
    """What ``/metrics`` serves: the registry, or in multiprocess mode every worker merged."""
    directory = metrics.multiprocess_dir
    if directory is None:
        return metrics.registry
    registry = CollectorRegistry()
    registry.register(_MultiprocessExemplarCollector(directory, metrics.exemplars))
    if metrics.build_info is not None:
        registry.register(metrics.build_info)
    for gauge in metrics.process_gauges:
        registry.register(gauge)
    return registry


def exposition(registry: Collector, accept: str | None) -> tuple[bytes, str]:
    """Render ``registry`` in the format the scraper asked for: (body, content type).

    OpenMetrics (with exemplars) when ``accept`` asks for ``application/openmetrics-text``,
    the classic text format otherwise.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """Remove a dead worker's live gauges and exemplars (gunicorn ``child_exit`` hook).

    ``directory`` defaults to ``PROMETHEUS_MULTIPROC_DIR``: the gunicorn master that runs
    the hook need not have called ``init()``.
    """
    from prometheus_client import multiprocess

    from devkit.config import multiprocess_dir

    directory = directory if directory is not None else multiprocess_dir()
    if directory is None:
        return
    # Runs in the gunicorn master: an error here would stop the master, not one worker.
    try:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        os.remove(os.path.join(directory, f"{_EXEMPLAR_FILE_PREFIX}{pid}.json"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        from devkit import _errors

        _errors.report("metrics", "mark_process_dead_failed", exc)
