"""Log lines that come close together go out together, and are never lost or reordered.

A system call per line is a large part of a small request's cost, and each write lets go
of the GIL for a moment, which wakes a thread waiting for it without letting it in
(docs/benchmarks.md#export-and-the-gil). So lines to a file descriptor that come close
together wait for the ones after them (at most ``MAX_HOLD_S``) and go out in writes of
at most ``MAX_HOLD_BYTES`` (``PIPE_BUF``: a pipe shared by several processes never mixes
their lines); a ticker thread writes the lines before a quiet spell.
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit import _batch, _ticker, logs
from devkit.config import Settings
from devkit.logs import LogPipeline


@pytest.fixture
def out(tmp_path: Path) -> Iterator[tuple[LogPipeline, Path]]:
    path = tmp_path / "stdout"
    with open(path, "wb") as stream:  # a file descriptor, as stdout is
        pipeline = LogPipeline(Settings.from_env({}), None, stream)
        yield pipeline, path
        pipeline.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pipeline's monotonic clock, moved by the test."""
    now = [100.0]
    monkeypatch.setattr(logs, "_monotonic", lambda: now[0])
    return now


def _messages(path: Path) -> list[str]:
    return [orjson.loads(line)["message"] for line in path.read_bytes().splitlines()]


def _emit(pipeline: LogPipeline, event: str, **fields: Any) -> None:
    pipeline.emit("info", {"event": event, "logger": "x", **fields})


def test_a_line_after_a_quiet_spell_is_written_at_once(out: tuple[LogPipeline, Path]) -> None:
    pipeline, path = out
    _emit(pipeline, "one")
    assert _messages(path) == ["one"]


def test_lines_close_together_wait_and_keep_their_order(
    out: tuple[LogPipeline, Path], clock: list[float]
) -> None:
    pipeline, path = out
    _emit(pipeline, "lead")  # after a quiet spell: at once
    for n in range(5):
        clock[0] += 0.001
        _emit(pipeline, f"line {n}")
    assert _messages(path) == ["lead"]
    clock[0] += logs.MAX_HOLD_S * 2  # a quiet spell: they go, then the new line at once
    _emit(pipeline, "after")
    assert _messages(path) == ["lead"] + [f"line {n}" for n in range(5)] + ["after"]


def test_release_held_writes_what_waits(out: tuple[LogPipeline, Path], clock: list[float]) -> None:
    pipeline, path = out
    _emit(pipeline, "lead")
    _emit(pipeline, "waiting")
    assert _messages(path) == ["lead"]
    pipeline.release_held()
    assert _messages(path) == ["lead", "waiting"]
    pipeline.release_held()  # nothing left: nothing twice
    assert _messages(path) == ["lead", "waiting"]


def test_a_line_waits_at_most_max_hold_s(out: tuple[LogPipeline, Path], clock: list[float]) -> None:
    pipeline, path = out
    _emit(pipeline, "lead")
    step = logs.MAX_HOLD_S / 3
    for name in ("first", "second", "third"):
        clock[0] += step
        _emit(pipeline, name)
    assert _messages(path) == ["lead"]  # "first" has waited 2/3 of MAX_HOLD_S
    clock[0] += step * 1.5
    _emit(pipeline, "fourth")  # "first" would wait longer: they go, "fourth" waits
    assert _messages(path) == ["lead", "first", "second", "third"]
    pipeline.release_held()
    assert _messages(path)[-1] == "fourth"


def test_a_quiet_process_writes_each_line_at_once(
    out: tuple[LogPipeline, Path], clock: list[float]
) -> None:
    """A line alone never waits for a next one that may not come."""
    pipeline, path = out
    for n in range(3):
        clock[0] += logs.MAX_HOLD_S * 2
        _emit(pipeline, f"{n}")
        assert _messages(path) == [f"{m}" for m in range(n + 1)]


class _Writes(io.BufferedIOBase):
    """A binary stream with a file descriptor that records each write's size."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.sizes: list[int] = []
        self.data = bytearray()

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        self.sizes.append(len(data))
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def test_lines_go_out_in_writes_of_at_most_max_hold_bytes(
    tmp_path: Path, clock: list[float]
) -> None:
    with open(tmp_path / "fd", "wb") as real:
        stream = _Writes(real.fileno())
        pipeline = LogPipeline(Settings.from_env({}), None, stream)  # type: ignore[arg-type]
        for n in range(200):
            clock[0] += 0.0001
            _emit(pipeline, "line", n=n, pad="x" * 150)
        pipeline.close()
    assert max(stream.sizes) <= logs.MAX_HOLD_BYTES
    assert len(stream.sizes) < 200 / 10  # together, not one by one
    numbers = [orjson.loads(line)["n"] for line in bytes(stream.data).splitlines()]
    assert numbers == list(range(200))


def test_a_line_longer_than_max_hold_bytes_goes_alone_after_the_waiting_ones(
    tmp_path: Path, clock: list[float]
) -> None:
    with open(tmp_path / "fd", "wb") as real:
        stream = _Writes(real.fileno())
        pipeline = LogPipeline(Settings.from_env({}), None, stream)  # type: ignore[arg-type]
        _emit(pipeline, "lead")
        _emit(pipeline, "short")
        _emit(pipeline, "long", big="y" * logs.MAX_HOLD_BYTES)
        pipeline.close()
    messages = [orjson.loads(line)["message"] for line in bytes(stream.data).splitlines()]
    assert messages == ["lead", "short", "long"]
    assert len(stream.sizes) == 3 and stream.sizes[2] > logs.MAX_HOLD_BYTES


def test_an_in_memory_stream_never_holds(clock: list[float]) -> None:
    stream = io.BytesIO()
    pipeline = LogPipeline(Settings.from_env({}), None, stream)
    for name in ("one", "two"):
        _emit(pipeline, name)
    assert [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        "one",
        "two",
    ]


def test_a_forked_child_drops_the_parents_waiting_lines(
    out: tuple[LogPipeline, Path], clock: list[float]
) -> None:
    pipeline, path = out
    _emit(pipeline, "lead")
    _emit(pipeline, "parent's")
    parent_ticker = pipeline._ticker
    pipeline.drop_held_after_fork()
    pipeline.release_held()
    assert _messages(path) == ["lead"]
    # The parent's ticker thread is not in a child: the child's starts with its first line.
    assert pipeline._ticker is not parent_ticker and pipeline._ticker.sleeping


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_the_ticker_writes_the_lines_before_a_quiet_spell(out: tuple[LogPipeline, Path]) -> None:
    pipeline, path = out
    for n in range(4):
        _emit(pipeline, f"{n}")
    # No further line, no flush: the ticker thread writes what waits.
    assert _wait_for(lambda: _messages(path) == ["0", "1", "2", "3"])


def test_close_writes_what_waits_and_stops_the_ticker(
    out: tuple[LogPipeline, Path], clock: list[float]
) -> None:
    pipeline, path = out
    _emit(pipeline, "lead")
    _emit(pipeline, "waiting")
    thread = pipeline._ticker._thread
    assert thread is not None
    pipeline.close()
    assert _messages(path) == ["lead", "waiting"]
    thread.join(2)
    assert not thread.is_alive()


def test_a_pipeline_nothing_uses_takes_its_ticker_thread_with_it(tmp_path: Path) -> None:
    with open(tmp_path / "stdout", "wb") as stream:
        pipeline = LogPipeline(Settings.from_env({}), None, stream)
        _emit(pipeline, "lead")
        _emit(pipeline, "waiting")  # starts the ticker's thread
        thread = pipeline._ticker._thread
        assert thread is not None
        del pipeline
        gc.collect()
        thread.join(2)
        assert not thread.is_alive()


class _Gate:
    """An exporter that waits for the test before it answers."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def export(self, batch: Sequence[Any], /) -> Any:
        self.entered.set()
        self.release.wait(10)
        self.batches.append(len(batch))

        class _Result:
            name = "SUCCESS"

        return _Result()

    def shutdown(self) -> None:
        self.release.set()


def test_the_export_thread_does_not_wait_for_a_full_batch_while_a_flush_waits() -> None:
    gate = _Gate()
    gate.release.set()
    queue = _batch.BatchQueue(gate, max_batch_size=64, schedule_delay_s=3600)
    try:
        queue([b"one"])
        with queue._cond:
            queue._flushers += 1
            try:
                batch, prepared = queue._next_locked()  # would wait an hour otherwise
            finally:
                queue._flushers -= 1
        assert batch == [b"one"] and not prepared
    finally:
        queue.shutdown(5)


def test_stdout_of_a_child_process_gets_every_line_once(tmp_path: Path) -> None:
    """The pipe a container runtime reads: a script logs while its spans export."""
    script = tmp_path / "app.py"
    script.write_text(
        "import devkit, threading\n"
        "devkit.init()\n"
        "from opentelemetry import trace\n"
        "tracer = trace.get_tracer('t')\n"
        "log = devkit.get_logger('app')\n"
        "for n in range(3000):\n"
        "    with tracer.start_as_current_span('s'):\n"
        "        log.info('line', n=n)\n"
        "devkit.shutdown()\n"
    )
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_", "PROMETHEUS"))
    }
    env.update(
        DEVKIT_SERVICE_NAME="hold",
        DEVKIT_TRACES_EXPORTER="otlp",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # refused: batches fail fast
        DEVKIT_SHUTDOWN_TIMEOUT_S="2",
    )
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=120, check=True
    )
    numbers = [
        record["n"]
        for record in map(orjson.loads, done.stdout.splitlines())
        if record.get("message") == "line"
    ]
    assert numbers == list(range(3000))


def _voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


class _Encoder:
    """An exporter with Python work to do per batch, as the OTLP encoder has."""

    def export(self, batch: Sequence[Any], /) -> Any:
        for item in batch:
            orjson.loads(item)

        class _Result:
            name = "SUCCESS"

        return _Result()

    def shutdown(self) -> None:
        pass


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_busy_writer_does_not_wake_the_export_thread_per_line() -> None:
    """The request thread logs back to back while batches export: the export thread is
    woken about once per batch step, not once per line (it was once per line)."""
    lines = 4000
    with open(os.devnull, "wb") as devnull:
        pipeline = LogPipeline(Settings.from_env({}), None, devnull)
        queue = _batch.BatchQueue(_Encoder(), max_batch_size=16, schedule_delay_s=30)
        item = orjson.dumps({"span": "x" * 200})
        try:
            queue([item])
            assert queue._thread is not None
            while queue._thread.native_id is None:
                pass
            thread_id = queue._thread.native_id
            before = _voluntary_switches(thread_id)
            for n in range(lines):
                queue([item])  # a batch of 16 every 16 lines keeps the thread busy
                pipeline.emit("info", {"event": "request completed", "logger": "x", "n": n})
            woken = _voluntary_switches(thread_id) - before
            assert queue.force_flush(10)
        finally:
            queue.shutdown(5)
    assert woken < lines / 4, f"export thread woken {woken} times for {lines} lines"


def test_the_export_thread_waits_when_a_flush_waits_and_nothing_is_queued() -> None:
    """Not waiting with an empty queue would spin the thread against the flusher."""
    import time

    gate = _Gate()
    gate.release.set()
    queue = _batch.BatchQueue(gate, max_batch_size=64, schedule_delay_s=0.2)
    try:
        with queue._cond:
            queue._flushers += 1
            try:
                start = time.monotonic()
                batch, _ = queue._next_locked()
                waited = time.monotonic() - start
            finally:
                queue._flushers -= 1
        assert batch == [] and waited >= 0.15
    finally:
        queue.shutdown(5)


def test_threads_writing_while_the_ticker_writes_lose_nothing_and_keep_order(
    out: tuple[LogPipeline, Path],
) -> None:
    pipeline, path = out
    stop = threading.Event()

    def ticker() -> None:  # what the ticker thread does, as often as it can
        while not stop.is_set():
            pipeline.release_held()

    def writer(name: str) -> None:
        for n in range(500):
            _emit(pipeline, "line", writer=name, n=n)

    releaser = threading.Thread(target=ticker)
    releaser.start()
    writers = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    releaser.join()
    pipeline.release_held()
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for i in range(4):
        assert [r["n"] for r in records if r["writer"] == f"w{i}"] == list(range(500))


_SHARED_PIPE_SCRIPT = """
import sys, devkit
devkit.init()
log = devkit.get_logger("app")
for n in range(2000):
    log.info("line", worker=sys.argv[1], n=n, pad="p" * int(sys.argv[2]))
devkit.shutdown()
"""


def test_processes_sharing_one_pipe_never_mix_their_lines(tmp_path: Path) -> None:
    """gunicorn's workers write to one stdout, a pipe in a container: no line is cut by
    another process's write."""
    script = tmp_path / "worker.py"
    script.write_text(_SHARED_PIPE_SCRIPT)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_", "PROMETHEUS"))
    }
    env["DEVKIT_SERVICE_NAME"] = "pipe"
    read, write = os.pipe()
    children = [
        subprocess.Popen(
            [sys.executable, str(script), name, str(pad)], stdout=write, env=env, close_fds=True
        )
        for name, pad in (("a", 300), ("b", 1200), ("c", 50))
    ]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read()
    for child in children:
        assert child.wait(60) == 0
    records = [orjson.loads(line) for line in output.splitlines()]  # each line whole
    for name in "abc":
        assert [r["n"] for r in records if r.get("worker") == name] == list(range(2000))


# -- the ticker ---------------------------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.rounds = 0
        self.offered = 0

    def work(self) -> None:
        self.rounds += 1

    def activity(self) -> int:
        return self.offered


def test_the_ticker_goes_idle_without_work_and_wakes_again() -> None:
    counts = _Counts()
    ticker = _ticker.Ticker(counts.work, counts.activity, every_s=0.01, idle_after_s=0.05)
    assert ticker.sleeping
    ticker.wake()
    assert not ticker.sleeping
    assert _wait_for(lambda: ticker.sleeping)  # idle: nothing was offered
    rounds = counts.rounds
    assert rounds >= 5  # one per round until idle, and one on going idle
    time.sleep(0.1)
    assert counts.rounds == rounds  # asleep: no more rounds
    ticker.wake()
    assert _wait_for(lambda: counts.rounds > rounds)
    ticker.stop()


def test_the_ticker_keeps_going_while_work_is_offered() -> None:
    counts = _Counts()
    ticker = _ticker.Ticker(counts.work, counts.activity, every_s=0.01, idle_after_s=0.05)
    ticker.wake()
    for _ in range(30):  # 0.3 s of work, six times the idle time
        counts.offered += 1
        time.sleep(0.01)
        assert not ticker.sleeping
    ticker.stop()


def test_a_stopped_ticker_ends_its_thread_and_ignores_wake() -> None:
    counts = _Counts()
    ticker = _ticker.Ticker(counts.work, counts.activity, every_s=0.01)
    ticker.wake()
    thread = ticker._thread
    assert thread is not None
    ticker.stop()
    thread.join(2)
    assert not thread.is_alive()
    ticker.wake()
    assert ticker._thread is thread  # no new thread


def test_a_failing_round_is_counted_and_the_ticker_goes_on() -> None:
    from devkit import _errors

    calls = [0]

    def work() -> None:
        calls[0] += 1
        raise RuntimeError("broken stream")

    ticker = _ticker.Ticker(work, lambda: calls[0], every_s=0.01, idle_after_s=0.05)
    _errors.set_strict(False)  # devkit's tests re-raise by default; a user's thread counts
    try:
        ticker.wake()
        assert _wait_for(lambda: calls[0] >= 3)
    finally:
        ticker.stop()
    assert _errors.counts()[("ticker", "work_failed")] >= 3
