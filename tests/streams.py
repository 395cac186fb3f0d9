"""A stdout on a pipe, as in a container, whose writes the test can count."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RecordedWrites(io.BufferedIOBase):
    """A binary stream on a file descriptor that records each write instead of making it
    (the descriptor is only asked what it is: a pipe takes writes of at most PIPE_BUF
    bytes whole)."""

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

    def lines_with(self, marker: bytes) -> list[bytes]:
        return [line for line in bytes(self.data).splitlines() if marker in line]


@contextmanager
def piped_writes() -> Iterator[RecordedWrites]:
    read, write = os.pipe()
    try:
        yield RecordedWrites(write)
    finally:
        os.close(read)
        os.close(write)
