"""Graceful stop on SIGTERM / SIGUSR1 (cluster wall-time limits): set a flag, the engine finishes the step.

The trainer polls :attr:`GracefulStop.requested` after every iteration, writes ``checkpoint_latest.pth``
and returns; ``nnssl_train --c`` then continues exactly where the run stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)


class GracefulStop:
    """Context manager that turns SIGTERM/SIGUSR1 into a stop request (handlers restored on exit)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning(
            "Received %s: stopping after the current iteration and saving checkpoint_latest.", self.signal_name
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
