"""One run per folder: an exclusive lock on ``<run folder>/.nnssl_run.lock`` for the lifetime of a run.

The lock is an ``flock`` on that file, so the kernel releases it when the process ends in any way (kill -9
included) and a lock can never outlive its holder on the same machine. The file also records who holds it
(host, pid, start time, command) for the message that refuses a second run. A record left by a process that
is gone (killed, crashed) is a stale lock: the next run takes it over and says so in a warning. On file systems
without ``flock`` the record alone decides: a dead pid on this host is stale, a live one or another host's
blocks the run (the message names the file to delete if that run is really gone).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = ".nnssl_run.lock"


class RunLockedError(RuntimeError):
    """Another run holds the folder's lock; the message names it."""


def _process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid from the original process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, when known, is still the process that started at ``start_ticks``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    now = _process_start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def _describe(info: dict[str, Any]) -> str:
    return (
        f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')}: {info.get('command', '?')})"
        if info
        else "another process"
    )


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock; a second holder gets :class:`RunLockedError`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def _read(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = {"pid": None, "host": "?", "command": f"unreadable lock record {raw[:80]!r}"}
        return info if isinstance(info, dict) else {}

    def _write(self, fd: int) -> None:
        pid = os.getpid()
        info = {
            "pid": pid,
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "start_ticks": _process_start_ticks(pid),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))
        os.fsync(fd)

    def _refuse(self, info: dict[str, Any], detail: str) -> RunLockedError:
        return RunLockedError(
            f"{self.folder} is in use by another run: {_describe(info)}. Two runs in one folder would overwrite each "
            f"other's checkpoints and metrics. Wait for it to end, or stop it (it saves checkpoint_latest on "
            f"SIGTERM) and continue with --c. {detail}"
        )

    def _warn_stale(self, info: dict[str, Any]) -> None:
        if info:
            logger.warning(
                "Took over the lock of %s: %s is no longer running (it ended without releasing %s).",
                self.folder,
                _describe(info),
                self.path.name,
            )

    def acquire(self) -> None:
        """Take the lock (creating the folder) or raise :class:`RunLockedError` naming the holder."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(
                    self._read(fd), "(If that process has just ended, try again in a few seconds.)"
                ) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._acquire_by_record(fd)
            else:
                self._warn_stale(self._read(fd))
            self._write(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _acquire_by_record(self, fd: int) -> None:
        """Fallback without flock: the record alone decides (a live or foreign holder blocks)."""
        info = self._read(fd)
        if not info or not info.get("pid"):
            return
        if info.get("host") != socket.gethostname():
            raise self._refuse(info, f"(This file system has no flock; if that run is gone, delete {self.path}.)")
        if process_alive(int(info["pid"]), info.get("start_ticks")):
            raise self._refuse(info, "")
        self._warn_stale(info)

    def release(self) -> None:
        """Clear the record and release the lock (the file stays, empty)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
