"""gunicorn settings for a devkit service with several worker processes.

Run (from the repository root, one command):

PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) gunicorn -c examples/gunicorn_conf.py examples.flask_app:app

PROMETHEUS_MULTIPROC_DIR must name an empty directory and be set before gunicorn starts,
so that every worker writes its metrics there; devkit's ``/metrics`` then sums all
workers on every scrape, whichever worker answers it. Empty (or recreate) the directory
at each start: files left by a previous run would be counted again.

Environment: ``PORT`` (default 8000), ``HOST`` (default 127.0.0.1), ``WEB_CONCURRENCY``
(number of workers, default 2). ``--preload`` works too: ``devkit.init()`` then runs once
in the master and every forked worker inherits it.
"""

from __future__ import annotations

import os
from typing import Any

from devkit.metrics import mark_process_dead

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"

# post_fork: nothing to do. devkit re-creates its span export thread (and its health
# worker pool) in each forked worker by itself, so workers forked after ``init()`` —
# with ``--preload`` — export their spans and cannot deadlock on a lock held at fork.


def child_exit(server: Any, worker: Any) -> None:
    """A worker died: drop its live gauges and exemplars from the aggregated metrics."""
    mark_process_dead(worker.pid)
