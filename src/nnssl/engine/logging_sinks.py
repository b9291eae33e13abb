"""Where training progress goes: the text log, the metrics stream and ``progress.png`` (rank 0 only).

- ``training_log_<Y>_<M>_<D>_<HH>_<MM>_<SS>.txt``: every message of the ``nnssl`` logger during the run.
- The metrics stream (:class:`MetricsStream`): one record per finished epoch (``epoch``, ``train_loss``,
  ``val_loss``, ``lr``, ``epoch_time_s``, ``skipped_steps``, ``global_step`` and the method's metrics as
  ``train/<name>``), written to every sink:

  * ``metrics.jsonl`` (always): one JSON object per line. On resume, lines of epochs that are redone are
    dropped, so the file always matches the checkpoint.
  * TensorBoard (``train.trackers=tensorboard``, extra ``nnssl[tensorboard]``): scalars under
    ``<run folder>/tensorboard``, step = epoch.
  * Weights & Biases (``train.trackers=wandb``, extra ``nnssl[wandb]``): ``wandb.log(record, step=epoch)`` in
    ``train.wandb_mode`` (``offline`` by default: files under ``<run folder>/wandb``, ``wandb sync`` uploads
    them), project ``train.wandb_project``, one W&B run id per run folder so that ``--c`` continues it.

  An optional sink that fails is logged and dropped; it never stops training.
- ``progress.png``: train/val loss and learning rate per epoch, redrawn after every epoch.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nnssl.serialization import atomic_path, to_jsonable

LOGGER_NAME = "nnssl"
logger = logging.getLogger(__name__)


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


class MetricsSink(Protocol):
    """Receives every epoch record of the metrics stream."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


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
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to do: every line is written when it comes."""


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (``epoch`` and ``global_step`` excluded: they are the step)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in ("epoch", "global_step") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardSink:
    """Scalars of every record under ``<folder>/tensorboard`` (``torch.utils.tensorboard``; step = epoch)."""

    def __init__(self, folder: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_run_id(folder: Path) -> str:
    """A stable W&B run id for a run folder, so that ``--c`` continues the same W&B run."""
    return "nnssl-" + hashlib.sha1(str(folder.resolve()).encode("utf-8")).hexdigest()[:16]


class WandbSink:
    """``wandb.log`` of every record (step = epoch) in ``train.wandb_mode`` (offline by default)."""

    def __init__(self, folder: Path, config: Mapping[str, Any]) -> None:
        import wandb

        train = config.get("train", {})
        self.wandb = wandb
        self.run = wandb.init(
            project=train.get("wandb_project", "nnssl"),
            mode=train.get("wandb_mode", "offline"),
            dir=str(folder),
            id=wandb_run_id(folder),
            name=f"{folder.parent.name}/{folder.name}",
            config=dict(config),
            resume="allow",
        )

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(_scalars(record), step=int(record["epoch"]))

    def close(self) -> None:
        self.run.finish()


#: ``train.trackers`` name -> (the module it needs, the pip extra that installs it, the sink's factory).
TRACKERS: dict[str, tuple[str, str, Callable[[Path, Mapping[str, Any]], MetricsSink]]] = {
    "tensorboard": ("tensorboard", "nnssl[tensorboard]", TensorBoardSink),
    "wandb": ("wandb", "nnssl[wandb]", WandbSink),
}


def missing_trackers(trackers: tuple[str, ...] | list[str]) -> list[str]:
    """``"<name> (pip install '<extra>')"`` for every requested tracker whose package is not installed."""
    return [
        f"{name} (pip install '{TRACKERS[name][1]}')"
        for name in trackers
        if name in TRACKERS and importlib.util.find_spec(TRACKERS[name][0]) is None
    ]


class MetricsStream:
    """One record per epoch to ``metrics.jsonl`` and the configured trackers (a failing tracker is dropped)."""

    def __init__(self, sinks: list[MetricsSink]) -> None:
        self.sinks = list(sinks)

    def write(self, record: dict[str, Any]) -> None:
        """Send one epoch's record (non-finite numbers become null) to every sink."""
        clean = {k: _finite_or_none(v) for k, v in to_jsonable(record).items()}
        for sink in list(self.sinks):
            try:
                sink.write(clean)
            except Exception as err:  # noqa: BLE001 - a tracker must never stop training
                if isinstance(sink, MetricsFile):
                    raise
                logger.warning(
                    "Metrics sink %s failed (%s); it is switched off for this run.", type(sink).__name__, err
                )
                self.sinks.remove(sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001
                logger.warning("Could not close metrics sink %s: %s", type(sink).__name__, err)


def open_metrics_stream(
    folder: Path, start_epoch: int, trackers: tuple[str, ...] | list[str] = (), config: Mapping[str, Any] | None = None
) -> MetricsStream:
    """``metrics.jsonl`` plus a sink per tracker name; a tracker that cannot start is logged and left out."""
    sinks: list[MetricsSink] = [MetricsFile(folder / "metrics.jsonl", start_epoch)]
    for name in trackers:
        try:
            sinks.append(TRACKERS[name][2](folder, config or {}))
            logger.info("Metrics also go to %s.", name)
        except Exception as err:  # noqa: BLE001 - training goes on with the other sinks
            logger.warning("Could not start the %s tracker (%s); metrics.jsonl is still written.", name, err)
    return MetricsStream(sinks)


def _plottable(values: list) -> list[float]:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]


def plot_progress(logs: dict[str, list], path: Path) -> None:
    """Draw train/val loss (left axis), learning rate (right axis) and, when evaluated, the probe's and the
    registration's mean Dice per epoch into ``path``."""
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
    curves = [
        (_plottable(logs.get(key, [])), label, colour)
        for key, label, colour in (
            ("probe_mean_dice", "probe mean Dice", "C3"),
            ("registration_mean_dice", "registration mean Dice", "C4"),
        )
    ]
    curves = [c for c in curves if any(math.isfinite(v) for v in c[0])]
    if curves:
        ax3 = ax.twinx()
        ax3.spines["right"].set_position(("axes", 1.18))
        for dice, label, colour in curves:
            points = [(e, v) for e, v in zip(epochs, dice) if math.isfinite(v)]
            ax3.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label, color=colour)
        ax3.set_ylabel("mean Dice")
        handles += ax3.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
