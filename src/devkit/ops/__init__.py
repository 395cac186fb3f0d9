"""What runs on the telemetry rather than in the request: SLO files and the Prometheus
rules, tests and status built from them, dashboards, canary judgement.

Pure functions from a spec to rules or JSON, plus one small Prometheus query client.
Nothing here touches the runtime: it depends on the configuration and on the names in
:mod:`devkit.conventions` only, so what it generates matches what services expose.
"""

__all__: list[str] = []
