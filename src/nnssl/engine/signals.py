"""Graceful stop on SIGTERM / SIGUSR1 (cluster wall-time limits, ``scancel``) and SIGINT (Ctrl-C).

The main process turns these signals into a stop request: the trainer polls :attr:`GracefulStop.requested`
after every optimizer step, writes ``checkpoint_latest.pth`` (with the position inside the epoch) and returns;
``nnssl_train --c`` then continues exactly where the run stopped. A second Ctrl-C raises KeyboardInterrupt at
once (for a run that hangs). Schedulers signal the whole process group, so DataLoader workers receive the signal
too: :func:`ignore_stop_signals` (run in every worker) makes them ignore it, and the main process shuts them down
after the checkpoint is written.

What happens after the stop is the caller's choice (:func:`reraise_stop_signal`): ``nnssl_train`` exits 0 after
SIGTERM/SIGUSR1 (130 after SIGINT); :func:`nnssl.engine.run.run_training` called from Python re-raises the signal
with the handler that was in place before the run (by default: SIGTERM/SIGUSR1 terminate the process, SIGINT
raises KeyboardInterrupt), so a calling program does not carry on as if nothing happened.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None
)


def ignore_stop_signals() -> None:
    """Ignore every stop signal in this process (DataLoader workers: the main process decides when they stop)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def reraise_stop_signal(signum: int) -> None:
    """Deliver ``signum`` again, now that the run's handlers are gone: the caller's Python handler is called directly
    (``default_int_handler`` raises KeyboardInterrupt), an ignored signal stays ignored, and the default action
    (terminate) comes from a real signal to the process.

    Not ``signal.raise_signal``: it sends the signal to the calling thread only, and when a library has left the
    signal blocked in the main thread's mask it stays pending, so a Python caller carried on as if nothing happened
    (seen as a flaky ``test_ctrl_c_in_a_python_caller_saves_then_raises_keyboard_interrupt`` in full-suite runs).
    """
    logger.warning("Re-raising %s now that checkpoint_latest is saved.", signal.Signals(signum).name)
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, inspect.currentframe())
    elif handler != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # process-directed: any thread that does not block it takes the default action


class GracefulStop:
    """Context manager that turns the stop signals into a stop request (handlers restored on exit).

    ``signum`` / ``signal_name`` say which signal asked for the stop (``signal_name`` is the reason given to
    :meth:`request` for a stop from code; ``signum`` is then None).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C: stopping without saving")
        self.requested = True
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        hint = " (press Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
        logger.warning(
            "Received %s: stopping after the current iteration and saving checkpoint_latest%s.", self.signal_name, hint
        )

    def request(self, reason: str = "request") -> None:
        """Ask for a stop from code (tests, callbacks)."""
        self.requested = True
        self.signal_name = reason

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
