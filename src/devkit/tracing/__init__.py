"""Tracing: the tracer provider, tail sampling and W3C context propagation (public
modules), and the server span, export queue, OTLP encoder and keep-alive transport that
make them cheap (private modules)."""

__all__: list[str] = []
