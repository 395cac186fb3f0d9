"""The lifecycle tests' WSGI service (Flask, for gunicorn): ``/work`` answers after ``ms``
milliseconds with ``status``; its body names the worker that served it."""

from __future__ import annotations

import os
import resource
import time

from flask import Flask, request

import devkit

if "LIFECYCLE_FSIZE_LIMIT" in os.environ:
    # The "full directory" test without a tmpfs: files of this process cannot grow past
    # the limit (Python ignores SIGXFSZ, so writes fail with EFBIG instead).
    limit = int(os.environ["LIFECYCLE_FSIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

devkit.init()
log = devkit.get_logger("lifecycle")
app = Flask(__name__)


@app.get("/work")
def work() -> tuple[dict[str, int], int]:
    ms = int(request.args.get("ms", "0"))
    status = int(request.args.get("status", "200"))
    if ms:
        time.sleep(ms / 1000)
    log.info("work done", ms=ms, status=status, pid=os.getpid())
    return {"pid": os.getpid()}, status


devkit.health.mark_started()
