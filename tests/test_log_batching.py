"""Lines written on the server's event loop go out once per loop iteration, in order."""

from __future__ import annotations

import asyncio
import io
import threading

from devkit import _errors
from devkit.config import Settings
from devkit.logs import LogPipeline


def pipeline() -> tuple[LogPipeline, io.BytesIO]:
    stream = io.BytesIO()
    return LogPipeline(Settings.from_env({}), None, stream), stream


def test_lines_of_one_iteration_are_written_together_at_its_end() -> None:
    pipe, stream = pipeline()
    seen: list[bytes] = []

    async def main() -> None:
        pipe.bind_loop(asyncio.get_running_loop())
        pipe.write(b"a\n")
        pipe.write(b"b\n")
        seen.append(stream.getvalue())  # nothing yet: the iteration is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(stream.getvalue())

    asyncio.run(main())
    assert seen == [b"", b"a\nb\n"]


def test_another_thread_writes_pending_lines_first() -> None:
    pipe, stream = pipeline()

    async def main() -> None:
        pipe.bind_loop(asyncio.get_running_loop())
        pipe.write(b"loop\n")
        thread = threading.Thread(target=pipe.write, args=(b"thread\n",))
        thread.start()
        thread.join()

    asyncio.run(main())
    assert stream.getvalue() == b"loop\nthread\n"


def test_flush_pending_and_a_closed_loop_lose_nothing() -> None:
    pipe, stream = pipeline()
    loop = asyncio.new_event_loop()

    async def write() -> None:
        pipe.bind_loop(asyncio.get_running_loop())
        pipe.write(b"1\n")

    loop.run_until_complete(write())
    pipe.flush_pending()
    assert stream.getvalue() == b"1\n"

    async def write_and_stop() -> None:
        pipe.write(b"2\n")
        asyncio.get_running_loop().stop()

    task = loop.create_task(write_and_stop())
    loop.run_forever()  # stops before the scheduled flush runs
    assert task.done()
    loop.close()
    pipe.write(b"3\n")  # same thread, loop closed: written through, pending first
    assert stream.getvalue() == b"1\n2\n3\n"


def test_the_buffer_is_bounded() -> None:
    pipe, stream = pipeline()

    async def main() -> None:
        pipe.bind_loop(asyncio.get_running_loop())
        for i in range(300):
            pipe.write(b"%d\n" % i)
        assert stream.getvalue().count(b"\n") == 256  # written once the bound is reached

    asyncio.run(main())
    assert stream.getvalue().count(b"\n") == 300


def test_a_broken_stream_is_counted_not_raised() -> None:
    pipe, stream = pipeline()
    before = _errors.counts().get(("logs", "write_failed"), 0)

    async def main() -> None:
        pipe.bind_loop(asyncio.get_running_loop())
        pipe.write(b"x\n")
        stream.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert _errors.counts().get(("logs", "write_failed"), 0) == before + 1
