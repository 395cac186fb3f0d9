"""The shortcuts through third-party internals: in use with the installed versions, equal
to the public path they replace, and taken nowhere but in ``devkit._compat``.

A dependency release that drops an internal makes devkit take the public path: correct,
but slower. These tests turn that into a failure instead of a silent slowdown (CI installs
the newest releases; tests/integration/test_dependency_ranges.py the lowest supported).
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from devkit import _compat

SRC = Path(__file__).resolve().parents[1] / "src" / "devkit"

#: Every shortcut devkit takes; a new one is added here with its probe.
EXPECTED = {
    "context-var",
    "span-context-tuple",
    "tracer-provider-global",
    "suppress-instrumentation-key",
    "loop-ready-queue",
    "metric-values",
    "otlp-encoder",
    "otlp-connection",
    "django-response-logged",
}


def test_every_shortcut_is_in_use_with_the_installed_versions() -> None:
    paths = {path.name: path for path in _compat.fast_paths()}
    assert set(paths) == EXPECTED
    lost = [f"{p.name} ({p.dependency}): {p.detail}" for p in paths.values() if not p.active]
    assert lost == []


def test_the_context_var_is_what_the_api_reads() -> None:
    var = _compat.runtime_context_var()
    assert var is not None
    ctx = Context({"k": "v"})
    token = var.set(ctx)
    try:
        assert context.get_current() is ctx
    finally:
        var.reset(token)


def test_the_span_key_is_where_the_api_finds_the_span() -> None:
    span = NonRecordingSpan(SpanContext(1, 2, False))
    assert trace.get_current_span(Context({_compat.span_key(): span})) is span


def test_the_direct_span_context_equals_the_constructors() -> None:
    make = _compat.span_context_factory()
    flags, state = TraceFlags(1), TraceState([("a", "b")])
    direct = make(0xABC, 0xDEF, flags, state)
    built = SpanContext(0xABC, 0xDEF, False, flags, state)
    assert direct == built
    assert (direct.is_valid, direct.is_remote, direct.trace_state) == (True, False, state)


def test_the_suppress_key_silences_instrumentations() -> None:
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    token = context.attach(context.set_value(_compat.suppress_instrumentation_key(), True))
    try:
        assert not is_instrumentation_enabled()
    finally:
        context.detach(token)
    assert is_instrumentation_enabled()


def test_the_ready_queue_shows_more_work_only_when_there_is_some() -> None:
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        queue = _compat.ready_queue(loop)
        idle = bool(queue)
        loop.call_soon(lambda: None)
        return idle, bool(queue)  # the same queue object, kept by the caller

    assert asyncio.run(main()) == (False, True)
    assert _compat.ready_queue(object())  # a loop that hides its queue counts as busy


#: Third-party private names devkit has used; none may appear outside _compat.
_KNOWN_INTERNALS = {
    "_value",
    "_exemplar",
    "_buckets",
    "_upper_bounds",
    "_sum",
    "_ready",
    "_client",
    "_transport",
    "_session",
    "_endpoint",
    "_shutdown",
    "_max_request_size",
    "_has_been_logged",
    "_TRACER_PROVIDER",
    "_RUNTIME_CONTEXT",
    "_current_context",
    "_SUPPRESS_INSTRUMENTATION_KEY",
}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            third_party = node.module.partition(".")[0] not in ("devkit", "__future__")
            private_module = any(part.startswith("_") for part in node.module.split("."))
            private_name = any(a.name.startswith("_") for a in node.names)
            private = third_party and (private_module or private_name)
            if private and not _in_type_checking(node, parents):
                found.append(f"{where} imports {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in _KNOWN_INTERNALS:
            found.append(f"{where} reads .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith(("__", "_devkit"))
        ):
            found.append(f"{where} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_third_party_internals_are_reached_only_through_compat() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name != "_compat.py":
            found += _violations(path)
    assert found == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = SRC / "_sample_for_the_scan.py"
    sample.write_text(
        "from opentelemetry.context import _RUNTIME_CONTEXT\n"
        "x = loop._ready\n"
        "y = getattr(client, '_transport', None)\n"
    )
    try:
        assert len(_violations(sample)) == 3
    finally:
        sample.unlink()


@pytest.mark.parametrize(
    "probe",
    [_compat.otlp_sender, _compat.otlp_client_transport, _compat.requests_session],
)
def test_probes_turn_down_what_they_do_not_know(probe: object) -> None:
    assert probe(object()) is None  # type: ignore[operator]
