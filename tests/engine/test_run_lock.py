"""One run per folder: a second run is refused naming the first; a dead holder's lock is taken over with a warning."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import QUICK_RUN, run_folder

from nnssl.cli.train import main
from nnssl.engine import run_lock
from nnssl.engine.run_lock import LOCK_FILE, RunLock, RunLockedError

HOLDER = "import sys, time; from nnssl.engine.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"  # noqa: E501


def _start_holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_and_a_killed_holders_lock_is_taken_over(demo_env: Path, capsys, caplog) -> None:
    folder = run_folder(demo_env)
    holder = _start_holder(folder)
    try:
        with pytest.raises(RunLockedError, match=f"in use by another run: pid {holder.pid} on {socket.gethostname()}"):
            RunLock(folder).acquire()
        assert main([*QUICK_RUN, "--set", "train.num_epochs=1"]) == 1  # the CLI: exit 1, the holder named
        err = capsys.readouterr().err
        assert f"is in use by another run: pid {holder.pid}" in err and "Traceback" not in err
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no release, the record stays behind
        holder.wait()
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="nnssl"):
        lock = RunLock(folder)
        lock.acquire()
    assert f"Took over the lock of {folder}: pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (folder / LOCK_FILE).read_text() == ""


def _no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)


def _write_record(folder: Path, **record) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"started": "then", "command": "nnssl_train ...", **record}))


def test_without_flock_the_record_decides(tmp_path: Path, monkeypatch, caplog) -> None:
    _no_flock(monkeypatch)
    host = socket.gethostname()
    _write_record(tmp_path, pid=os.getpid(), host=host, start_ticks=run_lock._process_start_ticks(os.getpid()))
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()  # a live holder
    _write_record(tmp_path, pid=12345, host="other-node")
    with pytest.raises(RunLockedError, match=f"delete {tmp_path / LOCK_FILE}"):
        RunLock(tmp_path).acquire()  # another host: cannot tell, so refused with the way out
    dead = _dead_pid()
    _write_record(tmp_path, pid=dead, host=host)
    with caplog.at_level(logging.WARNING, logger="nnssl"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"pid {dead} on {host}" in caplog.text and "no longer running" in caplog.text


def test_a_reused_pid_is_not_mistaken_for_the_holder() -> None:
    ticks = run_lock._process_start_ticks(os.getpid())
    if ticks is None:
        pytest.skip("needs /proc")
    assert run_lock.process_alive(os.getpid(), ticks)
    assert not run_lock.process_alive(os.getpid(), ticks + 1)  # same pid, another start time: another process
    assert not run_lock.process_alive(_dead_pid())
