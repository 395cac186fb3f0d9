"""Log lines wait while an export thread works, and are never lost or reordered.

A write to a file descriptor lets go of the GIL for a moment; a thread that waits for the
GIL is woken by it but rarely gets in, so a request thread writing once per request would
wake a working export thread once per request (docs/benchmarks.md#export-and-the-gil).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit import _batch, logs
from devkit.config import Settings
from devkit.logs import LogPipeline
from streams import RecordedWrites


class _Busy:
    """Stands for an export queue with a batch in hand."""


@pytest.fixture
def busy() -> Iterator[_Busy]:
    marker = _Busy()
    _batch.BUSY.add(marker)  # type: ignore[arg-type]
    try:
        yield marker
    finally:
        _batch.BUSY.discard(marker)  # type: ignore[arg-type]


@pytest.fixture
def out(tmp_path: Path) -> Iterator[tuple[LogPipeline, Path]]:
    path = tmp_path / "stdout"
    with open(path, "wb") as stream:  # a file descriptor, as stdout is
        yield LogPipeline(Settings.from_env({}), None, stream), path


def _messages(path: Path) -> list[str]:
    return [orjson.loads(line)["message"] for line in path.read_bytes().splitlines()]


def test_lines_are_written_at_once_when_no_export_thread_works(
    out: tuple[LogPipeline, Path],
) -> None:
    pipeline, path = out
    pipeline.emit("info", {"event": "one", "logger": "x"})
    assert _messages(path) == ["one"]


def test_lines_wait_while_an_export_thread_works_and_keep_their_order(
    out: tuple[LogPipeline, Path], busy: _Busy
) -> None:
    pipeline, path = out
    pipeline.emit("info", {"event": "lead", "logger": "x"})  # after a quiet spell: at once
    for n in range(5):
        pipeline.emit("info", {"event": f"line {n}", "logger": "x"})
    assert _messages(path) == ["lead"]
    _batch.BUSY.discard(busy)  # type: ignore[arg-type]
    pipeline.emit("info", {"event": "after", "logger": "x"})  # the next write takes them
    assert _messages(path) == ["lead"] + [f"line {n}" for n in range(5)] + ["after"]


def test_release_held_writes_what_waits(out: tuple[LogPipeline, Path], busy: _Busy) -> None:
    pipeline, path = out
    pipeline.emit("info", {"event": "lead", "logger": "x"})
    pipeline.emit("info", {"event": "waiting", "logger": "x"})
    assert _messages(path) == ["lead"]
    pipeline.release_held()
    assert _messages(path) == ["lead", "waiting"]
    pipeline.release_held()  # nothing left: nothing twice
    assert _messages(path) == ["lead", "waiting"]


def test_a_line_waits_at_most_max_hold_s(
    out: tuple[LogPipeline, Path], busy: _Busy, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, path = out
    now = [100.0]
    monkeypatch.setattr(logs, "_monotonic", lambda: now[0])
    pipeline.emit("info", {"event": "lead", "logger": "x"})
    step = logs.MAX_HOLD_S / 3
    for name in ("first", "second", "third"):
        now[0] += step
        pipeline.emit("info", {"event": name, "logger": "x"})
    assert _messages(path) == ["lead"]  # "first" has waited 2/3 of MAX_HOLD_S
    now[0] += step * 1.5
    pipeline.emit("info", {"event": "fourth", "logger": "x"})  # "first" would wait longer
    assert _messages(path) == ["lead", "first", "second", "third", "fourth"]


def test_a_quiet_process_writes_each_line_at_once_even_while_an_export_works(
    out: tuple[LogPipeline, Path], busy: _Busy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector that does not answer keeps its export thread busy until the export
    times out: lines far apart must not wait for it."""
    pipeline, path = out
    now = [100.0]
    monkeypatch.setattr(logs, "_monotonic", lambda: now[0])
    for n in range(3):
        now[0] += logs.MAX_HOLD_S * 2
        pipeline.emit("info", {"event": f"{n}", "logger": "x"})
        assert _messages(path) == [f"{m}" for m in range(n + 1)]


def test_at_most_max_hold_bytes_wait(out: tuple[LogPipeline, Path], busy: _Busy) -> None:
    pipeline, path = out
    big = "x" * 10_000
    written = 0
    for n in range(20):
        pipeline.emit("info", {"event": f"{n}", "logger": "x", "big": big})
        assert pipeline._held_bytes <= logs.MAX_HOLD_BYTES
        written = len(_messages(path))
    assert written > 0
    pipeline.release_held()
    assert _messages(path) == [f"{n}" for n in range(20)]


def _hold_and_release(stream: RecordedWrites) -> None:
    pipeline = LogPipeline(Settings.from_env({}), None, stream)
    for n in range(100):
        pipeline.emit("info", {"event": "line", "logger": "x", "n": n, "pad": "x" * 150})
    pipeline.emit("info", {"event": "long", "logger": "x", "pad": "y" * logs.MAX_WRITE_BYTES})
    pipeline.release_held()


def test_waiting_lines_go_to_a_file_in_one_write(tmp_path: Path, busy: _Busy) -> None:
    with open(tmp_path / "fd", "wb") as real:
        stream = RecordedWrites(real.fileno())
        _hold_and_release(stream)
    # The line after a quiet spell at once, then every waiting one together.
    assert len(stream.sizes) == 2
    records = [orjson.loads(line) for line in bytes(stream.data).splitlines()]
    assert [r.get("n") for r in records[:-1]] == list(range(100))


def test_waiting_lines_go_to_a_pipe_in_writes_of_at_most_pipe_buf(busy: _Busy) -> None:
    read, write = os.pipe()
    try:
        stream = RecordedWrites(write)  # records the writes; the pipe is only asked what it is
        _hold_and_release(stream)
    finally:
        os.close(read)
        os.close(write)
    assert stream.sizes[-1] > logs.MAX_WRITE_BYTES  # a longer line alone
    assert max(stream.sizes[:-1]) <= logs.MAX_WRITE_BYTES
    assert len(stream.sizes) < 100 / 5  # together, not one by one
    records = [orjson.loads(line) for line in bytes(stream.data).splitlines()]
    assert [r.get("n") for r in records[:-1]] == list(range(100))
    assert records[-1]["message"] == "long"


def _exporting_env(service: str, endpoint: str, shutdown_timeout_s: str) -> dict[str, str]:
    """A child process's environment: this one's without instrumentation variables, every
    trace kept and exported to ``endpoint``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_", "PROMETHEUS"))
    }
    env.update(
        DEVKIT_SERVICE_NAME=service,
        DEVKIT_TRACES_EXPORTER="otlp",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        DEVKIT_SHUTDOWN_TIMEOUT_S=shutdown_timeout_s,
    )
    return env


_SHARED_PIPE_SCRIPT = """
import sys, devkit
from opentelemetry import trace
devkit.init()
tracer = trace.get_tracer("t")
log = devkit.get_logger("app")
for n in range(3000):
    with tracer.start_as_current_span("s"):
        log.info("line", worker=sys.argv[1], n=n, pad="p" * int(sys.argv[2]))
devkit.shutdown()
"""


def test_processes_sharing_one_pipe_never_mix_their_lines(tmp_path: Path) -> None:
    """gunicorn's workers write to one stdout, a pipe in a container. Their export threads
    hang on a collector that never answers, so their lines wait and go out together: no
    write may be long enough for the pipe to split it among the processes."""
    script = tmp_path / "worker.py"
    script.write_text(_SHARED_PIPE_SCRIPT)
    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen(64)  # accepts connections, never answers
    env = _exporting_env("pipe", f"http://127.0.0.1:{collector.getsockname()[1]}", "1")
    read, write = os.pipe()
    try:
        children = [
            subprocess.Popen([sys.executable, str(script), name, str(pad)], stdout=write, env=env)
            for name, pad in (("a", 300), ("b", 1200), ("c", 50))
        ]
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            output = pipe.read()
        for child in children:
            assert child.wait(120) == 0
    finally:
        collector.close()
    records = [orjson.loads(line) for line in output.splitlines()]  # every line whole
    for name in "abc":
        assert [r["n"] for r in records if r.get("worker") == name] == list(range(3000))


def test_an_in_memory_stream_never_holds(busy: _Busy) -> None:

    stream = io.BytesIO()
    pipeline = LogPipeline(Settings.from_env({}), None, stream)
    pipeline.emit("info", {"event": "now", "logger": "x"})
    assert orjson.loads(stream.getvalue())["message"] == "now"


def test_a_forked_child_drops_the_parents_waiting_lines(
    out: tuple[LogPipeline, Path], busy: _Busy
) -> None:
    pipeline, path = out
    pipeline.emit("info", {"event": "lead", "logger": "x"})
    pipeline.emit("info", {"event": "parent's", "logger": "x"})
    pipeline.drop_held_after_fork()
    pipeline.release_held()
    assert _messages(path) == ["lead"]


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


def test_a_real_queue_holds_lines_during_its_batch_and_releases_them_after(
    out: tuple[LogPipeline, Path],
) -> None:
    pipeline, path = out
    gate = _Gate()
    queue = _batch.BatchQueue(gate, max_batch_size=4, schedule_delay_s=30)
    try:
        queue([b"a", b"b", b"c", b"d"])  # a full batch: the thread is busy from now on
        assert queue in _batch.BUSY
        assert gate.entered.wait(10)
        pipeline.emit("info", {"event": "lead", "logger": "x"})
        pipeline.emit("info", {"event": "during", "logger": "x"})
        assert _messages(path) == ["lead"]
        gate.release.set()
        assert queue.force_flush(10)
        deadline = threading.Event()
        for _ in range(100):  # the thread tells the pipeline after its batch
            if len(_messages(path)) > 1:
                break
            deadline.wait(0.05)
        assert _messages(path) == ["lead", "during"]
        assert queue not in _batch.BUSY
        assert gate.batches == [4]
    finally:
        gate.release.set()
        queue.shutdown(5)


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
    # Port 9 refuses the connection: batches fail fast.
    env = _exporting_env("hold", "http://127.0.0.1:9", "2")
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


def test_threads_writing_while_exports_start_and_end_lose_nothing_and_keep_order(
    out: tuple[LogPipeline, Path],
) -> None:
    pipeline, path = out
    marker = _Busy()
    stop = threading.Event()

    def exports_come_and_go() -> None:
        while not stop.is_set():
            _batch.BUSY.add(marker)  # type: ignore[arg-type]
            stop.wait(0.001)
            _batch.BUSY.discard(marker)  # type: ignore[arg-type]
            pipeline.release_held()  # what an export thread does when its batch is done

    def writer(name: str) -> None:
        for n in range(500):
            pipeline.emit("info", {"event": "line", "logger": "x", "writer": name, "n": n})

    toggler = threading.Thread(target=exports_come_and_go)
    toggler.start()
    writers = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    toggler.join()
    _batch.BUSY.discard(marker)  # type: ignore[arg-type]
    pipeline.release_held()
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for i in range(4):
        assert [r["n"] for r in records if r["writer"] == f"w{i}"] == list(range(500))
