from __future__ import annotations

import pytest

import devkit
from devkit.config import VARIABLES, Settings


def test_defaults_match_the_spec() -> None:
    s = Settings.from_env({})
    assert s.service_name == "unknown_service"
    assert s.service_version is None and s.environment is None
    assert (s.log_level, s.log_format) == ("info", "json")
    assert (s.redact_mode, s.redact_keys, s.redact_salt, s.redact_ip) == ("mask", (), None, False)
    assert s.traces_exporter == "none"
    assert s.sample_success_ratio == 0.1
    assert s.slow_threshold_ms == 300
    assert s.tail_sampling == "local"
    assert (s.metrics_path, s.metrics_port, s.health_path) == ("/metrics", None, "/healthz")
    assert (s.liveness_timeout_s, s.shutdown_timeout_s, s.disabled) == (10, 10, False)


def test_every_spec_variable_is_read() -> None:
    env = {
        "DEVKIT_SERVICE_NAME": "checkout",
        "DEVKIT_SERVICE_VERSION": "1.2.3",
        "DEVKIT_ENVIRONMENT": "staging",
        "DEVKIT_LOG_LEVEL": "WARN",
        "DEVKIT_LOG_FORMAT": "console",
        "DEVKIT_LOG_MAX_FIELD_BYTES": "4096",
        "DEVKIT_REDACT_MODE": "hash",
        "DEVKIT_REDACT_KEYS": "iban, user_email,,",
        "DEVKIT_REDACT_SALT": "s3cr3t-salt",
        "DEVKIT_REDACT_IP": "yes",
        "DEVKIT_TRACES_EXPORTER": "console",
        "DEVKIT_LOGS_EXPORTER": "otlp",
        "DEVKIT_LOGS_STDOUT": "false",
        "DEVKIT_SAMPLE_SUCCESS_RATIO": "0.25",
        "DEVKIT_SLOW_THRESHOLD_MS": "150",
        "DEVKIT_TAIL_SAMPLING": "collector",
        "DEVKIT_TRACE_RESPONSE": "no",
        "DEVKIT_TRUSTED_TRACE_RESPONSES": "api.internal, *.svc.cluster.local",
        "DEVKIT_METRICS_PATH": "/internal/metrics",
        "DEVKIT_METRICS_PORT": "9464",
        "DEVKIT_METRICS_TOKEN": "scrape-token-0123456789",
        "DEVKIT_HEALTH_PATH": "/health",
        "DEVKIT_HEALTH_ON_APP_PORT": "false",
        "DEVKIT_LIVENESS_TIMEOUT_S": "5",
        "DEVKIT_SHUTDOWN_TIMEOUT_S": "20",
        "DEVKIT_DISABLED": "0",
        "DEVKIT_INSTRUMENTATIONS": "httpx, Requests",
    }
    assert {v.name for v in VARIABLES} == set(env)
    s = Settings.from_env(env)
    assert s.service_name == "checkout" and s.service_version == "1.2.3"
    assert s.environment == "staging" and s.log_level == "warn" and s.log_format == "console"
    assert s.redact_mode == "hash" and s.redact_keys == ("iban", "user_email")
    assert s.redact_salt == "s3cr3t-salt" and s.redact_ip is True
    assert s.traces_exporter == "console" and s.sample_success_ratio == 0.25
    assert s.logs_exporter == "otlp" and s.logs_stdout is False
    assert s.trace_response is False
    assert s.trusted_trace_responses == ("api.internal", "*.svc.cluster.local")
    assert s.slow_threshold_ms == 150 and s.tail_sampling == "collector"
    assert s.metrics_path == "/internal/metrics" and s.metrics_port == 9464
    assert s.health_path == "/health" and s.liveness_timeout_s == 5
    assert s.shutdown_timeout_s == 20 and s.disabled is False
    assert s.instrumentations == ("httpx", "requests")
    assert s.log_max_field_bytes == 4096 and s.health_on_app_port is False
    assert s.metrics_token == "scrape-token-0123456789"
    assert "scrape-token" not in repr(s)


def test_otel_fallbacks() -> None:
    s = Settings.from_env(
        {
            "OTEL_SERVICE_NAME": "from-otel",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_SDK_DISABLED": "true",
        }
    )
    assert (s.service_name, s.traces_exporter, s.disabled) == ("from-otel", "otlp", True)
    s = Settings.from_env({"OTEL_RESOURCE_ATTRIBUTES": "team=a,service.name=res-svc"})
    assert s.service_name == "res-svc"
    s = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert s.traces_exporter == "otlp"
    s = Settings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "DEVKIT_TRACES_EXPORTER": "none"}
    )
    assert s.traces_exporter == "none"


def test_devkit_variable_wins_over_otel() -> None:
    s = Settings.from_env({"OTEL_SERVICE_NAME": "otel", "DEVKIT_SERVICE_NAME": "devkit"})
    assert s.service_name == "devkit"
    # either switch disables
    assert Settings.from_env({"DEVKIT_DISABLED": "false", "OTEL_SDK_DISABLED": "true"}).disabled


def test_keyword_overrides_win_over_environment() -> None:
    s = Settings.from_env(
        {"DEVKIT_SERVICE_NAME": "env", "DEVKIT_LOG_LEVEL": "debug"},
        service_name="kw",
        sample_success_ratio=0.5,
    )
    assert (s.service_name, s.log_level, s.sample_success_ratio) == ("kw", "debug", 0.5)


def test_empty_variables_count_as_unset() -> None:
    assert Settings.from_env({"DEVKIT_LOG_LEVEL": "", "DEVKIT_SERVICE_NAME": "  "}) == Settings()


BAD_VALUES = [
    ("DEVKIT_SERVICE_NAME", "x" * 300),
    ("DEVKIT_SERVICE_VERSION", "bad\x01version"),
    ("DEVKIT_ENVIRONMENT", "line\nbreak"),
    ("DEVKIT_LOG_LEVEL", "verbose"),
    ("DEVKIT_LOG_FORMAT", "xml"),
    ("DEVKIT_REDACT_MODE", "encrypt"),
    ("DEVKIT_REDACT_SALT", "short"),
    ("DEVKIT_REDACT_IP", "maybe"),
    ("DEVKIT_TRACES_EXPORTER", "zipkin"),
    ("OTEL_TRACES_EXPORTER", "jaeger"),
    ("DEVKIT_SAMPLE_SUCCESS_RATIO", "1.5"),
    ("DEVKIT_SAMPLE_SUCCESS_RATIO", "-0.1"),
    ("DEVKIT_SAMPLE_SUCCESS_RATIO", "ten percent"),
    ("DEVKIT_SAMPLE_SUCCESS_RATIO", "nan"),
    ("DEVKIT_SLOW_THRESHOLD_MS", "0"),
    ("DEVKIT_SLOW_THRESHOLD_MS", "fast"),
    ("DEVKIT_TAIL_SAMPLING", "remote"),
    ("DEVKIT_METRICS_PATH", "metrics"),
    ("DEVKIT_METRICS_PATH", "/metrics/"),
    ("DEVKIT_METRICS_PATH", "/healthz/metrics"),
    ("DEVKIT_METRICS_PORT", "0"),
    ("DEVKIT_METRICS_PORT", "70000"),
    ("DEVKIT_METRICS_PORT", "http"),
    ("DEVKIT_HEALTH_PATH", "/"),
    ("DEVKIT_HEALTH_PATH", "/a b"),
    ("DEVKIT_LIVENESS_TIMEOUT_S", "0"),
    ("DEVKIT_LIVENESS_TIMEOUT_S", "-1"),
    ("DEVKIT_SHUTDOWN_TIMEOUT_S", "soon"),
    ("DEVKIT_DISABLED", "maybe"),
    ("OTEL_SDK_DISABLED", "perhaps"),
    ("DEVKIT_INSTRUMENTATIONS", "all,httpx"),
    ("DEVKIT_INSTRUMENTATIONS", ",,"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_names_variable_value_and_accepted(variable: str, value: str) -> None:
    with pytest.raises(devkit.ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert variable in message
    assert "expected" in message
    assert info.value.variable.startswith(variable)
    if variable != "DEVKIT_REDACT_SALT":
        assert repr(value) in message


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_init_fails_fast_and_installs_nothing(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    before = list(logging.getLogger().handlers)
    monkeypatch.setenv(variable, value)
    with pytest.raises(devkit.ConfigError, match=variable):
        devkit.init()
    assert logging.getLogger().handlers == before
    from devkit import _state

    assert _state.current() is None


def test_hash_mode_without_salt_is_a_config_error() -> None:
    with pytest.raises(devkit.ConfigError, match="DEVKIT_REDACT_SALT"):
        Settings.from_env({"DEVKIT_REDACT_MODE": "hash"})


def test_salt_is_never_echoed() -> None:
    with pytest.raises(devkit.ConfigError) as info:
        Settings.from_env({"DEVKIT_REDACT_SALT": "abc"})
    assert "abc" not in str(info.value)
    s = Settings.from_env({"DEVKIT_REDACT_MODE": "hash", "DEVKIT_REDACT_SALT": "topsecret-123"})
    assert "topsecret-123" not in repr(s)


def test_unknown_keyword_is_a_config_error() -> None:
    with pytest.raises(devkit.ConfigError, match="servce_name"):
        Settings.from_env({}, servce_name="typo")


def test_bad_keyword_names_keyword_and_variable() -> None:
    with pytest.raises(devkit.ConfigError, match=r"DEVKIT_LOG_LEVEL \(keyword log_level=\)"):
        Settings.from_env({}, log_level="loud")


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.service_name = "x"  # type: ignore[misc]


def test_batch_queue_bounds_from_otel_bsp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    export = Settings.from_env(
        {
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20",
        }
    ).export
    assert (export.max_queue_size, export.schedule_delay_s, export.max_batch_size) == (
        100,
        0.25,
        20,
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    with pytest.raises(devkit.ConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        devkit.init()


def test_instrumentations_include_and_exclude() -> None:
    from devkit.tracing.provider import install_instrumentors

    names, undo = install_instrumentors(Settings.from_env({}, instrumentations="none"))
    assert names == []
    undo()
    names, undo = install_instrumentors(
        Settings.from_env({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx"})
    )
    try:
        assert "httpx" not in names
    finally:
        undo()
    names, undo = install_instrumentors(Settings.from_env({}, instrumentations="httpx"))
    try:
        assert names == ["httpx"]
    finally:
        undo()


def test_opentelemetry_variables_devkit_acts_on_are_read_here() -> None:
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_PROPAGATORS": "TraceContext",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "httpx, requests",
            "PROMETHEUS_MULTIPROC_DIR": "/run/metrics",
        }
    )
    assert settings.traces_exporter == "otlp"
    assert settings.export.endpoint == "http://collector:4318/v1/traces"
    assert settings.export.protocol_variable == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    assert settings.propagators == ("tracecontext",)
    assert settings.custom_propagators
    assert settings.disabled_instrumentations == {"httpx", "requests"}
    assert settings.multiprocess_dir == "/run/metrics"
    plain = Settings.from_env({"OTEL_PROPAGATORS": "baggage,tracecontext", "X": ""})
    assert not plain.custom_propagators and plain.multiprocess_dir is None


def test_a_bad_protocol_is_an_error_with_or_without_an_exporter() -> None:
    # A typo is caught the day it is made, not the day the exporter is turned on.
    for env in (
        {"DEVKIT_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
    ):
        with pytest.raises(devkit.ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='thrift'"):
            Settings.from_env(env)
    with pytest.raises(devkit.ConfigError, match="OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/json"})


def test_logs_export_reads_the_logs_variables_over_the_shared_ones() -> None:
    settings = Settings.from_env(
        {
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_BLRP_MAX_QUEUE_SIZE": "512",
            "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
        }
    )
    assert settings.logs_exporter == "otlp" and settings.logs_stdout
    assert settings.log_export.endpoint == "http://collector:4318/v1/logs"
    assert settings.log_export.max_queue_size == 512
    assert settings.export.endpoint == "http://collector:4318/v1/traces"
    assert settings.export.max_queue_size == 4096
    own = Settings.from_env(
        {
            "DEVKIT_LOGS_EXPORTER": "otlp_proto_http",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example:443/otlp",
        }
    )
    assert own.logs_exporter == "otlp"
    assert own.log_export.endpoint == "https://logs.example:443/otlp"
    assert Settings.from_env({}).log_export.endpoint == "http://localhost:4318/v1/logs"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("OTEL_PROPAGATORS", "tracecontext,b3", "installed propagators: baggage"),
        ("OTEL_PROPAGATORS", " , ", "installed propagators"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "otlp, console, none"),
        ("OTEL_LOGS_EXPORTER", "console", "otlp or none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf, grpc"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "parentbased_always_on"),
        ("OTEL_TRACES_SAMPLER_ARG", "2", "0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/v1/traces", "URL"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip"),
        ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "soon", "number"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "0", "1"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"),
    ],
)
def test_opentelemetry_variables_fail_at_settings_naming_themselves(
    variable: str, value: str, named: str
) -> None:
    env = {variable: value}
    if variable == "OTEL_TRACES_SAMPLER_ARG":
        env["OTEL_TRACES_SAMPLER"] = "traceidratio"
    with pytest.raises(devkit.ConfigError, match=variable) as caught:
        Settings.from_env(env)
    assert named in str(caught.value)


def test_otlp_headers_are_checked_but_never_echoed() -> None:
    with pytest.raises(devkit.ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as caught:
        Settings.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "Bearer-s3cr3t-token"})
    assert "s3cr3t" not in str(caught.value)
    ok = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20x,x-team=a"}
    Settings.from_env(ok)


def test_an_opentelemetry_sampler_sets_the_success_ratio_devkit_keeps() -> None:
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.05"}
    assert Settings.from_env(env).sample_success_ratio == 0.05
    own = {**env, "DEVKIT_SAMPLE_SUCCESS_RATIO": "0.5"}
    assert Settings.from_env(own).sample_success_ratio == 0.5
    assert Settings.from_env({"OTEL_TRACES_SAMPLER": "traceidratio"}).sample_success_ratio == 1
    assert Settings.from_env({"OTEL_TRACES_SAMPLER": "Always_On"}).sample_success_ratio == 1
    off = {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}
    assert Settings.from_env(off).sample_success_ratio == 0
    assert Settings.from_env({}).sample_success_ratio == 0.1
    from devkit.config import source_of

    (ratio,) = [v for v in VARIABLES if v.field == "sample_success_ratio"]
    assert source_of(ratio, env) == "environment, OTEL_TRACES_SAMPLER"
    assert source_of(ratio, own) == "environment"


def test_sources_of_effective_values() -> None:
    from devkit.config import source_of

    by_name = {v.name: v for v in VARIABLES}
    env = {"OTEL_SERVICE_NAME": "a", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert source_of(by_name["DEVKIT_SERVICE_NAME"], env) == "environment, OTEL_SERVICE_NAME"
    assert (
        source_of(by_name["DEVKIT_TRACES_EXPORTER"], env)
        == "because OTEL_EXPORTER_OTLP_ENDPOINT is set"
    )
    assert source_of(by_name["DEVKIT_LOG_LEVEL"], {"DEVKIT_LOG_LEVEL": " "}) == "default"
    resource = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=b"}
    assert source_of(by_name["DEVKIT_SERVICE_NAME"], resource) == (
        "environment, OTEL_RESOURCE_ATTRIBUTES"
    )


@pytest.mark.parametrize(
    "value", ["http://api.internal", "api internal", "*", "none", "a.b,*.c.d", ""]
)
def test_trusted_trace_responses(value: str) -> None:
    env = {"DEVKIT_TRUSTED_TRACE_RESPONSES": value}
    if value.startswith("http") or " " in value:
        with pytest.raises(devkit.ConfigError, match="DEVKIT_TRUSTED_TRACE_RESPONSES"):
            Settings.from_env(env)
        return
    expected = {"*": ("*",), "none": (), "": ("*",)}.get(value, tuple(value.split(",")))
    assert Settings.from_env(env).trusted_trace_responses == expected
