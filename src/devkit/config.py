"""Settings: every knob of devkit, read from an environment mapping and validated once.

This module is the only one in devkit that reads the environment. ``Settings.from_env``
takes the mapping as an argument (tests pass a plain dict; ``None`` means ``os.environ``)
and applies precedence *keyword override > DEVKIT_* variable > OTEL_* fallback >
default*. The OpenTelemetry variables devkit acts on itself (export protocol and queue,
propagators, disabled instrumentations) and ``PROMETHEUS_MULTIPROC_DIR`` are read here
too, into options per area. Every invalid value raises :class:`devkit.ConfigError`
naming the variable, the value and what is accepted, so a bad deployment fails at
start-up, not at the first request. Empty variables count as unset, as in the
OpenTelemetry SDK.

The lists other modules share (log levels, probe kinds, frameworks, the server-side
instrumentors devkit replaces) live here as well, so each is written once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from devkit import _env
from devkit.exceptions import ConfigError

__all__ = [
    "DEFAULT_PROPAGATORS",
    "FRAMEWORKS",
    "LEVELS",
    "LEVEL_ALIASES",
    "LEVEL_NUMBERS",
    "MULTIPROCESS_VARIABLE",
    "PROBE_KINDS",
    "SERVER_INSTRUMENTORS",
    "UNMATCHED_ROUTE",
    "VARIABLES",
    "ExportOptions",
    "Framework",
    "Settings",
    "Variable",
    "multiprocess_dir",
    "reference_table",
    "source_of",
    "traces_endpoint",
]

#: Log levels in the order of severity, as written in the ``level`` field.
LEVELS: tuple[str, ...] = ("debug", "info", "warn", "error", "fatal")
#: The stdlib ``logging`` number of each level.
LEVEL_NUMBERS: dict[str, int] = {"debug": 10, "info": 20, "warn": 30, "error": 40, "fatal": 50}
#: Other spellings accepted for a level (in ``DEVKIT_LOG_LEVEL`` and as logger methods).
LEVEL_ALIASES: dict[str, str] = {"warning": "warn", "critical": "fatal", "err": "error"}

LogLevel = Literal["debug", "info", "warn", "error", "fatal"]

#: The ``route`` of a request that matched no route (metrics label, access record, span
#: name): one value, so scanners' 404 floods cannot grow the label set.
UNMATCHED_ROUTE = "<unmatched>"

#: The Kubernetes probes devkit answers under ``DEVKIT_HEALTH_PATH``.
PROBE_KINDS: tuple[Literal["startup", "ready", "live"], ...] = ("startup", "ready", "live")


@dataclass(frozen=True)
class Framework:
    """A framework ``init()`` instruments when it is installed."""

    #: The integration module under ``devkit.integrations``.
    integration: str
    #: Shown by ``devkit doctor``.
    label: str
    #: Top-level packages; the first one must be installed for the integration.
    packages: tuple[str, ...]


FRAMEWORKS: tuple[Framework, ...] = (
    Framework("starlette", "starlette/fastapi", ("starlette", "fastapi")),
    Framework("flask", "flask", ("flask",)),
    Framework("django", "django", ("django",)),
)

#: OpenTelemetry instrumentors of what devkit's own middleware covers: never activated,
#: or requests would get two server spans.
SERVER_INSTRUMENTORS: frozenset[str] = frozenset(
    {
        "asgi",
        "wsgi",
        "fastapi",
        "starlette",
        "flask",
        "django",
        "tornado",
        "falcon",
        "pyramid",
        "aiohttp-server",
        "logging",
    }
)

#: What ``OTEL_PROPAGATORS`` names when it asks for nothing but devkit's own propagator.
DEFAULT_PROPAGATORS: tuple[str, ...] = ("tracecontext", "baggage")


MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_PROTOCOLS = ("http/protobuf", "grpc")
_TRACES_PATH = "/v1/traces"
_LOGS_PATH = "/v1/logs"
_LOGS_URL = "http://localhost:4318/v1/logs"
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


@dataclass(frozen=True)
class ExportOptions:
    """Where and how kept spans leave the process.

    From the OpenTelemetry variables; the OTLP exporter reads the rest of its own
    (headers, compression, timeout, certificates) itself.
    """

    #: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``.
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    #: The variable the protocol came from, named by errors about it.
    protocol_variable: str = "OTEL_EXPORTER_OTLP_PROTOCOL"
    #: The URL traces are sent to, derived as the OpenTelemetry SDK derives it.
    endpoint: str = "http://localhost:4318/v1/traces"
    #: Bounds of devkit's export queue (``OTEL_BSP_*``). Batches are smaller than the
    #: SDK's 512 spans: encoding one holds the GIL the request path needs.
    max_queue_size: int = 8192
    max_batch_size: int = 64
    schedule_delay_s: float = 1.0


@dataclass(frozen=True)
class Variable:
    """One environment variable of the contract, for validation and the docs reference."""

    name: str
    field: str
    default: str
    meaning: str
    fallback: tuple[str, ...] = ()


#: Every variable devkit reads (SPEC section 8); the docs reference is generated from this.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "DEVKIT_SERVICE_NAME",
        "service_name",
        "`OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES`, "
        "else `unknown_service`",
        "service name in logs, metrics, traces",
        ("OTEL_SERVICE_NAME",),
    ),
    Variable("DEVKIT_SERVICE_VERSION", "service_version", "unset", "`service.version`"),
    Variable("DEVKIT_ENVIRONMENT", "environment", "unset", "`deployment.environment.name`"),
    Variable("DEVKIT_LOG_LEVEL", "log_level", "info", "debug, info, warn, error, fatal"),
    Variable("DEVKIT_LOG_FORMAT", "log_format", "json", "json, console"),
    Variable(
        "DEVKIT_LOG_MAX_FIELD_BYTES",
        "log_max_field_bytes",
        "16384",
        "longest field of a log record, in bytes; a longer one is cut and marked with its size",
    ),
    Variable("DEVKIT_REDACT_MODE", "redact_mode", "mask", "mask, hash"),
    Variable("DEVKIT_REDACT_KEYS", "redact_keys", "empty", "extra comma-separated keys"),
    Variable("DEVKIT_REDACT_SALT", "redact_salt", "unset", "HMAC key for hash mode"),
    Variable("DEVKIT_REDACT_IP", "redact_ip", "false", "also redact IPv4 addresses"),
    Variable(
        "DEVKIT_TRACES_EXPORTER",
        "traces_exporter",
        "`otlp` if an OTLP endpoint is set, else `none`",
        "otlp, console, none",
        ("OTEL_TRACES_EXPORTER",),
    ),
    Variable(
        "DEVKIT_LOGS_EXPORTER",
        "logs_exporter",
        "none",
        "none, otlp: also export every record over OTLP",
        ("OTEL_LOGS_EXPORTER",),
    ),
    Variable(
        "DEVKIT_LOGS_STDOUT",
        "logs_stdout",
        "true",
        "write the JSON lines to stdout (false: OTLP only)",
    ),
    Variable(
        "DEVKIT_SAMPLE_SUCCESS_RATIO",
        "sample_success_ratio",
        "0.1, or `OTEL_TRACES_SAMPLER_ARG` with a ratio-based `OTEL_TRACES_SAMPLER`",
        "0..1",
    ),
    Variable(
        "DEVKIT_SLOW_THRESHOLD_MS", "slow_threshold_ms", "300", "keep traces at least this slow"
    ),
    Variable("DEVKIT_TAIL_SAMPLING", "tail_sampling", "local", "local, collector"),
    Variable(
        "DEVKIT_TRACE_RESPONSE",
        "trace_response",
        "true",
        "answer with the W3C `server-timing: trace;desc=...` metric (false: no header)",
    ),
    Variable(
        "DEVKIT_TRUSTED_TRACE_RESPONSES",
        "trusted_trace_responses",
        "`*`",
        "hosts whose `trace` server-timing keeps the local trace: `*`, `none`, or "
        "comma-separated host names and `*.domain` suffixes",
    ),
    Variable("DEVKIT_METRICS_PATH", "metrics_path", "/metrics", "exposition path"),
    Variable("DEVKIT_METRICS_PORT", "metrics_port", "unset", "serve metrics on their own port"),
    Variable(
        "DEVKIT_METRICS_TOKEN",
        "metrics_token",
        "unset",
        "bearer token `/metrics` requires (`Authorization: Bearer <token>`); probes stay open",
    ),
    Variable("DEVKIT_HEALTH_PATH", "health_path", "/healthz", "probe prefix"),
    Variable(
        "DEVKIT_HEALTH_ON_APP_PORT",
        "health_on_app_port",
        "true",
        "also answer the probes on the application's port (false: on `DEVKIT_METRICS_PORT` only)",
    ),
    Variable("DEVKIT_LIVENESS_TIMEOUT_S", "liveness_timeout_s", "10", "event-loop heartbeat limit"),
    Variable("DEVKIT_SHUTDOWN_TIMEOUT_S", "shutdown_timeout_s", "10", "drain and flush limit"),
    Variable(
        "DEVKIT_INSTRUMENTATIONS",
        "instrumentations",
        "all",
        "OpenTelemetry instrumentors to activate: all, none, or a comma-separated list of "
        "entry-point names (httpx, requests, sqlalchemy, ...); "
        "`OTEL_PYTHON_DISABLED_INSTRUMENTATIONS` excludes",
    ),
    Variable(
        "DEVKIT_DISABLED",
        "disabled",
        "false",
        "init() installs nothing",
        ("OTEL_SDK_DISABLED",),
    ),
)
_BY_FIELD = {v.field: v for v in VARIABLES}


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one devkit runtime (immutable)."""

    service_name: str = "unknown_service"
    service_version: str | None = None
    environment: str | None = None
    log_level: LogLevel = "info"
    log_format: Literal["json", "console"] = "json"
    log_max_field_bytes: int = 16384
    redact_mode: Literal["mask", "hash"] = "mask"
    redact_keys: tuple[str, ...] = ()
    redact_salt: str | None = field(default=None, repr=False)
    redact_ip: bool = False
    traces_exporter: Literal["otlp", "console", "none"] = "none"
    logs_exporter: Literal["otlp", "none"] = "none"
    logs_stdout: bool = True
    sample_success_ratio: float = 0.1
    slow_threshold_ms: float = 300.0
    tail_sampling: Literal["local", "collector"] = "local"
    trace_response: bool = True
    trusted_trace_responses: tuple[str, ...] = ("*",)
    metrics_path: str = "/metrics"
    metrics_port: int | None = None
    metrics_token: str | None = field(default=None, repr=False)
    health_path: str = "/healthz"
    health_on_app_port: bool = True
    liveness_timeout_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    instrumentations: tuple[str, ...] = ("all",)
    disabled: bool = False
    # -- read from OpenTelemetry and prometheus-client variables (no keyword) -------------
    #: The OTLP exporter and the export queue (``OTEL_EXPORTER_OTLP_*``, ``OTEL_BSP_*``).
    export: ExportOptions = field(default_factory=ExportOptions)
    #: The same for logs (``OTEL_EXPORTER_OTLP_LOGS_*``, ``OTEL_BLRP_*``).
    log_export: ExportOptions = field(default_factory=lambda: ExportOptions(endpoint=_LOGS_URL))
    #: ``OTEL_PROPAGATORS``, lower case, in order.
    propagators: tuple[str, ...] = DEFAULT_PROPAGATORS
    #: ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``.
    disabled_instrumentations: frozenset[str] = frozenset()
    #: ``PROMETHEUS_MULTIPROC_DIR``: workers' metrics are merged on every scrape.
    multiprocess_dir: str | None = None

    @property
    def custom_propagators(self) -> bool:
        """Whether ``OTEL_PROPAGATORS`` asks for more than devkit's W3C propagator."""
        return set(self.propagators) != set(DEFAULT_PROPAGATORS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), keyword ``overrides``
        winning."""
        unknown = sorted(set(overrides) - set(_BY_FIELD))
        if unknown:
            raise ConfigError(
                unknown[0], overrides[unknown[0]], "a keyword among " + ", ".join(_BY_FIELD)
            )
        env = _present(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for var in VARIABLES:
            if var.field in overrides and overrides[var.field] is not None:
                raw: object = overrides[var.field]
                name = f"{var.name} (keyword {var.field}=)"
            elif var.name in env:
                raw, name = env[var.name], var.name
            else:
                fallback = next((f for f in var.fallback if f in env), None)
                if fallback is None:
                    continue
                raw, name = env[fallback], fallback
            values[var.field] = _PARSERS[var.field](name, raw)

        if "service_name" not in values:
            service = _resource_attribute(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "service.name")
            if service:
                values["service_name"] = service
        if "traces_exporter" not in values and (
            "OTEL_EXPORTER_OTLP_ENDPOINT" in env or "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env
        ):
            values["traces_exporter"] = "otlp"
        if (
            "disabled" not in overrides
            and not values.get("disabled")
            and "OTEL_SDK_DISABLED" in env
            and "DEVKIT_DISABLED" in env
        ):
            values["disabled"] = _env.parse_bool("OTEL_SDK_DISABLED", env["OTEL_SDK_DISABLED"])

        _check_opentelemetry(env)
        if "sample_success_ratio" not in values:
            ratio = _sampler_ratio(env)
            if ratio is not None:
                values["sample_success_ratio"] = ratio
        values["export"] = _export_options(env, "TRACES", _TRACES_PATH, "OTEL_BSP_")
        values["log_export"] = _export_options(env, "LOGS", _LOGS_PATH, "OTEL_BLRP_")
        if "OTEL_PROPAGATORS" in env:
            values["propagators"] = tuple(
                name.lower()
                for name in _env.parse_list("OTEL_PROPAGATORS", env["OTEL_PROPAGATORS"])
            )
        if "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS" in env:
            values["disabled_instrumentations"] = frozenset(
                _env.parse_list(
                    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
                    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"],
                )
            )
        values["multiprocess_dir"] = env.get(MULTIPROCESS_VARIABLE)

        settings = cls(**values)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        if self.redact_mode == "hash" and not self.redact_salt:
            raise ConfigError(
                "DEVKIT_REDACT_SALT",
                self.redact_salt,
                "a non-empty secret when DEVKIT_REDACT_MODE=hash",
            )
        if self.metrics_path == self.health_path or self.metrics_path.startswith(
            self.health_path + "/"
        ):
            raise ConfigError(
                "DEVKIT_METRICS_PATH",
                self.metrics_path,
                f"a path outside the probe prefix {self.health_path}",
            )
        if not self.health_on_app_port and self.metrics_port is None:
            raise ConfigError(
                "DEVKIT_HEALTH_ON_APP_PORT",
                self.health_on_app_port,
                "true unless DEVKIT_METRICS_PORT is set (the probes must be served somewhere)",
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated again."""
        settings = dataclasses.replace(self, **changes)
        settings._check_consistency()
        return settings

    @property
    def level_number(self) -> int:
        """The stdlib ``logging`` number of :attr:`log_level`."""
        return LEVEL_NUMBERS[self.log_level]


def _present(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that are set: empty ones count as unset, as in the OpenTelemetry SDK."""
    return {k: v for k, v in environ.items() if v.strip()}


def _export_options(env: Mapping[str, str], signal: str, path: str, queue: str) -> ExportOptions:
    """One signal's OTLP options: ``OTEL_EXPORTER_OTLP_<signal>_*`` over the shared
    ``OTEL_EXPORTER_OTLP_*``, and its export queue's ``<queue>*`` bounds."""
    options: dict[str, Any] = {}
    for variable in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if variable in env:
            options["protocol_variable"] = variable
            options["protocol"] = _env.parse_choice(variable, env[variable], _PROTOCOLS)
            break
    options["endpoint"] = _signal_endpoint(
        env, signal, path, options.get("protocol", "http/protobuf")
    )
    for suffix, key, scale in (
        ("MAX_QUEUE_SIZE", "max_queue_size", None),
        ("MAX_EXPORT_BATCH_SIZE", "max_batch_size", None),
        ("SCHEDULE_DELAY", "schedule_delay_s", 1000.0),
    ):
        variable = queue + suffix
        if variable in env:
            value = _env.parse_int(variable, env[variable], minimum=1, maximum=10_000_000)
            options[key] = value / scale if scale else value
    return ExportOptions(**options)


def _signal_endpoint(env: Mapping[str, str], signal: str, path: str, protocol: str) -> str:
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return base or "http://localhost:4317"
    if base:
        return base.rstrip("/") + path
    return "http://localhost:4318" + path


def traces_endpoint(environ: Mapping[str, str], protocol: str = "http/protobuf") -> str:
    """The URL the OTLP trace exporter sends to, as the OpenTelemetry SDK derives it."""
    return _signal_endpoint(environ, "TRACES", _TRACES_PATH, protocol)


#: The success ratio each of OpenTelemetry's samplers (``OTEL_TRACES_SAMPLER``) stands
#: for in devkit's tail sampler; ``None``: the ratio is ``OTEL_TRACES_SAMPLER_ARG``.
#: Plugin samplers decide at the head, which would drop the errors devkit keeps: refused.
_SAMPLER_RATIOS: dict[str, float | None] = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
    "traceidratio": None,
    "parentbased_traceidratio": None,
}


def _installed(group: str) -> set[str]:
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=group)}


def _check_opentelemetry(env: Mapping[str, str]) -> None:
    """The OpenTelemetry variables whose bad values the SDK would only log (or raise at
    import): a ConfigError naming the variable and what is accepted or installed."""
    if "OTEL_PROPAGATORS" in env:
        names = [n.strip().lower() for n in env["OTEL_PROPAGATORS"].split(",") if n.strip()]
        installed = _installed("opentelemetry_propagator") | {"none"}
        unknown = [n for n in names if n not in installed]
        if unknown or not names:
            raise ConfigError(
                "OTEL_PROPAGATORS",
                env["OTEL_PROPAGATORS"],
                "a comma-separated list of installed propagators: " + ", ".join(sorted(installed)),
            )
    if "OTEL_TRACES_SAMPLER" in env:
        _env.parse_choice("OTEL_TRACES_SAMPLER", env["OTEL_TRACES_SAMPLER"], _SAMPLER_RATIOS)
    for signal in ("", "TRACES_", "LOGS_"):
        endpoint = f"OTEL_EXPORTER_OTLP_{signal}ENDPOINT"
        if endpoint in env and not _URL.fullmatch(env[endpoint].strip()):
            raise ConfigError(endpoint, env[endpoint], "an http:// or https:// URL")
        compression = f"OTEL_EXPORTER_OTLP_{signal}COMPRESSION"
        if compression in env:
            _env.parse_choice(compression, env[compression], ("gzip", "deflate", "none"))
        timeout = f"OTEL_EXPORTER_OTLP_{signal}TIMEOUT"
        if timeout in env:
            _env.parse_float(timeout, env[timeout], minimum=0.0, exclusive_minimum=True)
        headers = f"OTEL_EXPORTER_OTLP_{signal}HEADERS"
        if headers in env and not _pairs_ok(env[headers]):
            # Header values are credentials: never echoed.
            raise ConfigError(headers, "<hidden>", "comma-separated key=value pairs")
    if "OTEL_RESOURCE_ATTRIBUTES" in env and not _pairs_ok(env["OTEL_RESOURCE_ATTRIBUTES"]):
        raise ConfigError(
            "OTEL_RESOURCE_ATTRIBUTES",
            env["OTEL_RESOURCE_ATTRIBUTES"],
            "comma-separated key=value pairs (values percent-encoded)",
        )


def _pairs_ok(raw: str) -> bool:
    items = [item for item in raw.split(",") if item.strip()]
    return bool(items) and all(
        sep and key.strip() for key, sep, _ in (item.partition("=") for item in items)
    )


def _sampler_ratio(env: Mapping[str, str]) -> float | None:
    """The success ratio an ``OTEL_TRACES_SAMPLER`` stands for, if one is set."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler not in _SAMPLER_RATIOS:
        return None
    ratio = _SAMPLER_RATIOS[sampler]
    if ratio is not None:
        return ratio
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    return _env.parse_float("OTEL_TRACES_SAMPLER_ARG", raw, minimum=0.0, maximum=1.0)


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (default ``os.environ``), or None when unset.

    For code that runs without ``init()``, such as a gunicorn master's ``child_exit`` hook.
    """
    return _present(os.environ if environ is None else environ).get(MULTIPROCESS_VARIABLE)


def source_of(variable: Variable, environ: Mapping[str, str]) -> str:
    """Where the effective value of ``variable`` comes from (``devkit doctor`` shows it)."""
    env = _present(environ)
    if variable.name in env:
        return "environment"
    for other in variable.fallback:
        if other in env:
            return f"environment, {other}"
    if variable.field == "service_name" and _resource_attribute(
        env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "service.name"
    ):
        return "environment, OTEL_RESOURCE_ATTRIBUTES"
    if variable.field == "traces_exporter":
        for endpoint in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if endpoint in env:
                return f"because {endpoint} is set"
    if variable.field == "sample_success_ratio" and _sampler_ratio(env) is not None:
        return "environment, OTEL_TRACES_SAMPLER"
    return "default"


def _text(name: str, raw: object) -> str:
    text = str(raw).strip()
    if not text or len(text) > 255 or any(ord(c) < 32 for c in text):
        raise ConfigError(name, raw, "a non-empty printable string of at most 255 characters")
    return text


def _choice(*choices: str, aliases: dict[str, str] | None = None) -> Callable[[str, object], str]:
    return lambda name, raw: _env.parse_choice(name, raw, choices, aliases)


def _salt(name: str, raw: object) -> str:
    text = str(raw)
    if len(text) < 8:
        raise ConfigError(name, "<hidden>", "a secret of at least 8 characters")
    return text


# RFC 6750 b64token: what a scraper's ``Authorization: Bearer`` header can carry as is.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{16,4096}=*")


def _bearer_token(name: str, raw: object) -> str:
    text = str(raw).strip()
    if not _BEARER_TOKEN.fullmatch(text):
        # A credential: never echoed.
        raise ConfigError(
            name, "<hidden>", "a token of 16 to 4096 characters of A-Z a-z 0-9 - . _ ~ + /"
        )
    return text


def _traces_exporter(name: str, raw: object) -> str:
    return _env.parse_choice(name, raw, ("otlp", "console", "none"))


_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def _trusted_hosts(name: str, raw: object) -> tuple[str, ...]:
    """``*`` (every host), ``none`` (no host), or host names, ``*.domain`` suffixes and
    IP addresses, lower case."""
    hosts = tuple(host.lower() for host in _env.parse_list(name, raw))
    if hosts in (("*",), ("none",)):
        return () if hosts == ("none",) else hosts
    if not hosts or not all(_HOST_PATTERN.fullmatch(host) for host in hosts):
        raise ConfigError(name, raw, "*, none, or comma-separated host names and *.domain suffixes")
    return hosts


def _logs_exporter(name: str, raw: object) -> str:
    return _env.parse_choice(
        name,
        raw,
        ("otlp", "none"),
        aliases={"otlp_proto_http": "otlp"},
        accepted="otlp or none (devkit writes every record to stdout already: no console)",
    )


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "service_name": _text,
    "service_version": _text,
    "environment": _text,
    "log_level": _choice(*LEVELS, aliases=LEVEL_ALIASES),
    "log_format": _choice("json", "console"),
    "log_max_field_bytes": lambda n, r: _env.parse_int(n, r, minimum=1024, maximum=1 << 24),
    "redact_mode": _choice("mask", "hash"),
    "redact_keys": _env.parse_list,
    "redact_salt": _salt,
    "redact_ip": _env.parse_bool,
    "traces_exporter": _traces_exporter,
    "logs_exporter": lambda n, r: _logs_exporter(n, r),
    "logs_stdout": _env.parse_bool,
    "sample_success_ratio": lambda n, r: _env.parse_float(n, r, minimum=0.0, maximum=1.0),
    "slow_threshold_ms": lambda n, r: _env.parse_float(n, r, minimum=0.0, exclusive_minimum=True),
    "tail_sampling": _choice("local", "collector"),
    "trace_response": _env.parse_bool,
    "trusted_trace_responses": lambda n, r: _trusted_hosts(n, r),
    "metrics_path": _env.parse_path,
    "metrics_port": lambda n, r: _env.parse_int(n, r, minimum=1, maximum=65535),
    "metrics_token": lambda n, r: _bearer_token(n, r),
    "health_path": _env.parse_path,
    "health_on_app_port": _env.parse_bool,
    "liveness_timeout_s": lambda n, r: _env.parse_float(n, r, minimum=0.0, exclusive_minimum=True),
    "shutdown_timeout_s": lambda n, r: _env.parse_float(n, r, minimum=0.0, exclusive_minimum=True),
    "instrumentations": lambda n, r: _instrumentations(n, r),
    "disabled": _env.parse_bool,
}


def _instrumentations(name: str, raw: object) -> tuple[str, ...]:
    names = tuple(item.lower() for item in _env.parse_list(name, raw))
    if not names:
        raise ConfigError(name, raw, "all, none, or a comma-separated list of names")
    if ("all" in names or "none" in names) and len(names) > 1:
        raise ConfigError(name, raw, "all or none alone, or a list of instrumentor names")
    return names


def _resource_attribute(raw: str, key: str) -> str | None:
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None


def reference_table() -> str:
    """The configuration reference as a markdown table (``docs/configuration.md`` embeds it)."""
    rows = ["| variable | keyword | default | meaning |", "|---|---|---|---|"]
    for var in VARIABLES:
        name = f"`{var.name}`" + "".join(f" / `{f}`" for f in var.fallback)
        rows.append(f"| {name} | `{var.field}=` | {_md_default(var.default)} | {var.meaning} |")
    return "\n".join(rows) + "\n"


def _md_default(default: str) -> str:
    plain = "`" in default or " " in default or default in ("unset", "empty")
    return default if plain else f"`{default}`"
