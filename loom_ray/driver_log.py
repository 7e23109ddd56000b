"""The driver's own log, kept bounded.

Under ``ray job submit`` the driver's stdout and stderr are one file, ``job-driver-<submission id>.log``, which
Ray's job supervisor opens for appending and never rotates (Ray rotates its own logs and the actors', not
this one). A driver that runs for months would fill the head's ``/tmp``. :class:`LogCap` rotates it the way
logrotate's ``copytruncate`` does: past ``LOOM_DRIVER_LOG_MAX_BYTES`` the file is copied to ``<log>.1``
(replacing the previous copy) and emptied in place; the writers' next appends start at its beginning, and
``ray job logs`` and the dashboard keep reading the same file. A line written between the copy and the
truncation is lost, as with ``copytruncate``: the driver writes its progress between checks, so at most a
log line of another thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogCap:
    """Rotation of the log file open as ``fd`` (for appending) at ``path``, past ``max_bytes``."""

    fd: int
    path: str
    max_bytes: int

    @classmethod
    def of(cls, fd: int, max_bytes: int) -> LogCap | None:
        """The cap of ``fd`` when it is a regular file opened for appending (as Ray's job supervisor opens the
        driver's log) and ``max_bytes`` is not 0; else None: a terminal, a pipe or a file written at an offset
        is left alone (emptying a file written at an offset would leave a hole, not room)."""
        if max_bytes <= 0:
            return None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            appending = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return cls(fd, path, max_bytes) if regular and appending and os.path.isfile(path) else None

    def check(self) -> bool:
        """Rotate when the file has passed ``max_bytes``; whether it did. Called by the driver between its
        progress lines; a failure (the disk full, the file gone) is logged and the log left as it is."""
        try:
            if os.fstat(self.fd).st_size <= self.max_bytes:
                return False
            sys.stdout.flush()
            sys.stderr.flush()
            shutil.copyfile(self.path, f"{self.path}.1")
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            log.warning("cannot rotate the driver's log %s (%s)", self.path, exc)
            return False
        log.info("driver log passed %d bytes: its lines so far are in %s.1", self.max_bytes, self.path)
        return True
