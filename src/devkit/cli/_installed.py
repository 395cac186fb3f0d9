"""What is installed: lookups the commands share, none of which imports the module."""

from __future__ import annotations

import importlib.util

__all__ = ["OTLP_GRPC_MODULE", "OTLP_HTTP_MODULE", "importable"]

OTLP_HTTP_MODULE = "opentelemetry.exporter.otlp.proto.http"
OTLP_GRPC_MODULE = "opentelemetry.exporter.otlp.proto.grpc"


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
