"""The multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``), checked and reserved at init.

prometheus-client keeps one file per metric type and process in that directory, creates
each one sparse and writes to it through a memory mapping. On a full filesystem (a
memory-backed ``emptyDir`` at its ``sizeLimit``) such a write cannot fail politely: the
kernel ends the process with SIGBUS, in the middle of the request that touched the page,
and a gunicorn master restarts the worker into the same crash. A directory that is missing
or read-only fails later too, as a bare ``OSError`` from inside prometheus-client.

So ``init()`` calls :func:`reserve` before any metric exists: it creates this process's
files and allocates their first mapping for real (``posix_fallocate``). A directory that
is missing, not writable or full is a :class:`~devkit.ConfigError` naming the variable, at
start; and the pages a service's first series are written to are backed, so they cannot
fault later.
"""

from __future__ import annotations

import errno
import os

from devkit.config import MULTIPROCESS_VARIABLE
from devkit.exceptions import ConfigError

__all__ = ["FILE_KINDS", "reserve"]

#: The files devkit's own metrics map in each process: counters, histograms and the
#: in-progress gauge (``livesum``), as prometheus-client names them (``<kind>_<pid>.db``).
FILE_KINDS = ("counter", "histogram", "gauge_livesum")

#: The size prometheus-client gives a new file and maps (``mmap_dict``; a unit test
#: checks that the installed client agrees).
INITIAL_SIZE = 1 << 16

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: A filesystem that cannot allocate ahead of writing: only the write check is possible.
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def _invalid(directory: str, what: str) -> ConfigError:
    return ConfigError(MULTIPROCESS_VARIABLE, directory, what)


def reserve(directory: str, pid: int | None = None) -> None:
    """Check that ``directory`` is a writable directory with room for this process's
    metric files, and allocate them (``<kind>_<pid>.db``, :data:`FILE_KINDS`); raises
    :class:`~devkit.ConfigError` naming ``PROMETHEUS_MULTIPROC_DIR`` otherwise."""
    if not os.path.isdir(directory):
        what = "not a directory" if os.path.exists(directory) else "does not exist"
        raise _invalid(directory, f"an existing directory ({what})")
    pid = os.getpid() if pid is None else pid
    for kind in FILE_KINDS:
        _allocate(directory, os.path.join(directory, f"{kind}_{pid}.db"))


def _allocate(directory: str, path: str) -> None:
    created = False
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            # Left by an earlier process with this pid (a restarted container) or made
            # by this one already: its content is prometheus-client's, only allocate.
            fd = os.open(path, os.O_RDWR)
        try:
            size = max(INITIAL_SIZE, os.fstat(fd).st_size)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise
                if created:
                    os.ftruncate(fd, INITIAL_SIZE)
        finally:
            os.close(fd)
    except OSError as exc:
        if created:
            try:
                os.remove(path)
            except OSError:
                pass
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in _FULL:
            what = f"a directory with room for {len(FILE_KINDS)} files of {INITIAL_SIZE} bytes"
        else:
            what = "a directory this process can write to"
        raise _invalid(directory, f"{what} ({reason})") from exc
