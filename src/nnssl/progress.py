"""When to draw progress bars: only on an interactive terminal.

A tqdm bar redraws itself with carriage returns; written to a file (``nnssl_train ... > log.txt 2>&1``, a
cluster job's output) that is thousands of ``\\r`` fragments. Bars are therefore shown only when they were asked
for, stderr is a terminal, and the process is not an LSF or SLURM batch job (upstream's rule). Without a bar,
long loops log a line now and then instead (the trainer: the first step at once, then at most every minute).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

BATCH_JOB_VARIABLES = ("LSF_JOBID", "SLURM_JOB_ID")


def show_progress(requested: bool = True, stream: TextIO | None = None) -> bool:
    """Whether to draw a progress bar on ``stream`` (default stderr)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    interactive = bool(isatty()) if callable(isatty) else False
    return requested and interactive and not any(os.environ.get(v) for v in BATCH_JOB_VARIABLES)
