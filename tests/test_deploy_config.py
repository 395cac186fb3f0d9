"""The shipped OpenTelemetry Collector configs agree with devkit (SPEC section 5).

``deploy/otel-collector/`` is what ``DEVKIT_TAIL_SAMPLING=collector`` relies on: the
agent must route by trace id, and the sampler's policies must be devkit's local rules
with devkit's default numbers. These tests parse the YAML; they do not run a collector.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.config import Settings
from devkit.tracing.sampling import SamplingLimits

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "otel-collector"
CONFIGS = ("agent.yaml", "sampler.yaml")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def policies() -> dict[str, dict[str, Any]]:
    """The sampler's tail_sampling policies by type (each type appears once)."""
    listed = load("sampler.yaml")["processors"]["tail_sampling"]["policies"]
    by_type: dict[str, dict[str, Any]] = {}
    for policy in listed:
        assert policy["type"] not in by_type, f"two {policy['type']} policies"
        by_type[policy["type"]] = policy
    return by_type


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- tier 1: the agent ---------------------------------------------------------------------


def test_agent_load_balances_by_trace_id() -> None:
    agent = load("agent.yaml")
    lb = agent["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert "otlp" in lb["protocol"]
    assert "endpoint" not in (lb["protocol"]["otlp"] or {}), "the resolver sets endpoints"
    assert lb["resolver"]["dns"]["hostname"].startswith("otel-sampler-headless.")
    assert agent["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]


def test_agent_resolver_port_is_the_samplers_otlp_port() -> None:
    lb_port = load("agent.yaml")["exporters"]["loadbalancing"]["resolver"]["dns"]["port"]
    sampler_grpc = load("sampler.yaml")["receivers"]["otlp"]["protocols"]["grpc"]
    assert lb_port == port_of(sampler_grpc["endpoint"])


def test_agent_accepts_devkits_default_protocol() -> None:
    # devkit exports OTLP http/protobuf by default (port 4318); gRPC users need 4317.
    protocols = load("agent.yaml")["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["http"]["endpoint"]) == 4318
    assert port_of(protocols["grpc"]["endpoint"]) == 4317


# -- tier 2: the sampler -------------------------------------------------------------------


def test_sampler_policies_are_exactly_devkits_rules() -> None:
    # An extra policy (always_sample, rate_limiting ...) would keep what devkit drops.
    assert set(policies()) == {"status_code", "numeric_attribute", "latency", "probabilistic"}


def test_sampler_keeps_error_status() -> None:
    assert policies()["status_code"]["status_code"]["status_codes"] == ["ERROR"]


def test_sampler_keeps_every_5xx() -> None:
    rule = policies()["numeric_attribute"]["numeric_attribute"]
    assert rule["key"] == "http.response.status_code"
    assert rule["min_value"] == 500
    # Both bounds set: older collector releases read a missing max_value as 0.
    assert rule["max_value"] >= 599
    assert not rule.get("invert_match", False)


def test_sampler_latency_equals_devkit_slow_threshold() -> None:
    threshold = policies()["latency"]["latency"]["threshold_ms"]
    assert threshold == Settings().slow_threshold_ms
    assert "upper_threshold_ms" not in policies()["latency"]["latency"]


def test_sampler_probability_equals_devkit_success_ratio() -> None:
    percentage = policies()["probabilistic"]["probabilistic"]["sampling_percentage"]
    assert percentage == pytest.approx(Settings().sample_success_ratio * 100)


def test_sampler_samples_in_its_traces_pipeline() -> None:
    sampler = load("sampler.yaml")
    processors = sampler["service"]["pipelines"]["traces"]["processors"]
    assert "tail_sampling" in processors
    assert processors.index("tail_sampling") < processors.index("batch")
    tail = sampler["processors"]["tail_sampling"]
    # The decision waits for the trace, but not longer than devkit buffers one itself.
    wait = re.fullmatch(r"(\d+)s", str(tail["decision_wait"]))
    assert wait is not None, tail["decision_wait"]
    assert 0 < int(wait.group(1)) <= SamplingLimits().max_age_s
    assert tail["num_traces"] > tail["expected_new_traces_per_sec"] * int(wait.group(1))


def test_sampler_exports_to_the_backend_from_the_environment() -> None:
    sampler = load("sampler.yaml")
    assert sampler["exporters"]["otlp"]["endpoint"] == "${env:TRACES_BACKEND_ENDPOINT}"
    assert sampler["service"]["pipelines"]["traces"]["exporters"] == ["otlp"]


# -- both ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_pipelines_reference_only_defined_components(name: str) -> None:
    config = load(name)
    pipelines = config["service"]["pipelines"]
    assert pipelines, f"{name} has no pipeline"
    for pipeline_name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            defined = set(config.get(kind) or {})
            for component in pipeline.get(kind) or []:
                assert component in defined, f"{name}: {pipeline_name} uses undefined {component}"
        assert pipeline["receivers"] and pipeline["exporters"], f"{name}: {pipeline_name}"
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"{name}: {extension}"


@pytest.mark.parametrize("name", CONFIGS)
def test_memory_limiter_runs_first(name: str) -> None:
    config = load(name)
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["processors"][0] == "memory_limiter"


@pytest.mark.parametrize("name", CONFIGS)
def test_receivers_listen_on_all_interfaces(name: str) -> None:
    # Recent collectors default to localhost, unreachable from other pods.
    for protocol in load(name)["receivers"]["otlp"]["protocols"].values():
        assert protocol["endpoint"].startswith("0.0.0.0:")


# -- the docs quote the code -----------------------------------------------------------------


def test_sampling_doc_names_every_drop_reason_and_limit() -> None:
    source = "".join(
        (ROOT / "src" / "devkit" / f).read_text()
        for f in ("tracing/sampling.py", "tracing/_export.py", "_batch.py")
    )
    reasons = set(re.findall(r'_on_drop\(\s*"([a-z_]+)"', source))
    assert len(reasons) >= 7, reasons
    doc = (ROOT / "docs" / "sampling.md").read_text()
    for reason in reasons:
        assert f"`{reason}`" in doc, reason
    limits = SamplingLimits()
    for number in (limits.max_traces, limits.max_spans_per_trace, limits.max_decisions):
        assert f"{number:,}" in doc, number
    assert f"{limits.max_age_s:g} s" in doc
