"""Races ``devkit.init()`` from several threads at once, then logs one record through
devkit and one through the standard library; prints a JSON summary on stderr.

Run by test_lifecycle_under_load.py in a fresh interpreter each time (``init()`` is once
per process).
"""

from __future__ import annotations

import json
import logging
import sys
import threading

import devkit
from devkit import _setup

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
builds = 0
_build = _setup._build


def counting_build(state: object) -> None:
    global builds
    builds += 1
    _build(state)  # type: ignore[arg-type]


_setup._build = counting_build  # type: ignore[assignment]
sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: the worst race
barrier = threading.Barrier(THREADS)
runtimes: list[object] = []
errors: list[str] = []


def race() -> None:
    barrier.wait()
    try:
        runtimes.append(devkit.init())
    except BaseException as exc:  # every exception is a failure the test reports
        errors.append(repr(exc))


threads = [threading.Thread(target=race) for _ in range(THREADS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
sys.setswitchinterval(0.005)
devkit.get_logger("race").info("one devkit record")
logging.getLogger("race.stdlib").warning("one stdlib record")
sys.stdout.flush()
summary = {
    "builds": builds,
    "runtimes": len(runtimes),
    "distinct_runtimes": len({id(r) for r in runtimes}),
    "errors": errors,
    "root_handlers": len(logging.getLogger().handlers),
}
sys.stderr.write(json.dumps(summary) + "\n")
