"""HTTP middleware: one pass per request for correlation, logs, metrics and the server span."""
