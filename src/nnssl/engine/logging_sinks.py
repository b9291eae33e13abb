"""Where training progress goes: the text log, ``metrics.jsonl`` and ``progress.png`` (rank 0 only).

- ``training_log_<Y>_<M>_<D>_<HH>_<MM>_<SS>.txt``: every message of the ``nnssl`` logger during the run.
- ``metrics.jsonl``: one JSON object per finished epoch (``epoch``, ``train_loss``, ``val_loss``, ``lr``,
  ``epoch_time_s``, ``skipped_steps``, ``global_step`` and the method's metrics as ``train/<name>``).
  On resume, lines of epochs that are redone are dropped, so the file always matches the checkpoint.
- ``progress.png``: train/val loss and learning rate per epoch, redrawn after every epoch.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from pathlib import Path
from typing import Any

from nnssl.serialization import atomic_path, to_jsonable

LOGGER_NAME = "nnssl"


def attach_text_log(folder: Path) -> tuple[logging.Handler, Path]:
    """Send the ``nnssl`` logger's records to a new ``training_log_<timestamp>.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
    path = folder / f"training_log_{stamp}.txt"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(LOGGER_NAME)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler, path


def detach_text_log(handler: logging.Handler) -> None:
    """Stop writing to the text log."""
    logging.getLogger(LOGGER_NAME).removeHandler(handler)
    handler.close()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFile:
    """Append-only ``metrics.jsonl``, truncated to the epochs before ``start_epoch`` on resume."""

    def __init__(self, path: Path, start_epoch: int = 0) -> None:
        self.path = path
        if path.is_file():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("epoch", 0) < start_epoch:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one epoch's record (non-finite numbers become null)."""
        clean = {k: _finite_or_none(v) for k, v in to_jsonable(record).items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")


def _plottable(values: list) -> list[float]:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def plot_progress(logs: dict[str, list], path: Path) -> None:
    """Draw train/val loss (left axis) and learning rate (right axis) per epoch into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(len(logs.get("train_losses", []))))
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    ax.plot(epochs, _plottable(logs.get("train_losses", [])), label="train loss", color="C0")
    val = _plottable(logs.get("val_losses", []))
    if any(math.isfinite(v) for v in val):
        ax.plot(epochs, val, label="val loss", color="C1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, _plottable(logs.get("lrs", [])), label="lr", color="C2", linestyle="--")
    ax2.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
