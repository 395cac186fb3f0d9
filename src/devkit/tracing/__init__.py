"""Tracing: the tracer provider, tail sampling, span export and W3C context propagation."""
