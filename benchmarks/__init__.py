"""devkit's benchmark harness: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Per-request overhead of devkit against the bare app and the hand-assembled stack, and
logging throughput. Each variant runs in its own process, variants are interleaved over
rounds, and rounds are summarised by their median.
"""
