"""Live logging of the metric rows to TensorBoard or Weights & Biases (offline): ``--log tensorboard|wandb``.

Each row the loop records (the one schema of :mod:`testbed.results`) is logged as it is made, under the
names of metrics.csv: scalar ``<run_id>/<column>`` at step ``iteration`` (the measured columns too,
``wall_time`` etc.). Crash-safe: events are flushed at least once a second and when the run ends or
fails, so a killed run keeps what it logged up to then. Weights & Biases runs offline (``wandb sync``
uploads later). Logging never changes a run folder: the same spec and seed give the same files with
or without it. Both packages are optional (``pip install 'rebel-testbed[tools]'`` installs both).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from testbed.errors import InputError

LOGGERS = ("tensorboard", "wandb")
_SINK = None
_KEYS = ("run_id", "problem", "algorithm", "seed", "iteration")


def _scalars(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if k not in _KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError("--log tensorboard needs the tensorboard package (pip install 'rebel-testbed[tools]')") from None
        self.writer, self._flushed = SummaryWriter(str(logdir)), time.monotonic()

    def log(self, row: dict) -> None:
        for k, v in _scalars(row).items():
            self.writer.add_scalar(f"{row['run_id']}/{k}", v, row["iteration"])
        if time.monotonic() - self._flushed > 1.0:
            self.writer.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, logdir: Path):
        try:
            import wandb
        except ImportError:
            raise InputError("--log wandb needs the wandb package (pip install 'rebel-testbed[tools]')") from None
        logdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(logdir), project="testbed", name=logdir.name)

    def log(self, row: dict) -> None:
        self.run.log({f"{row['run_id']}/{k}": v for k, v in {**_scalars(row), "iteration": row["iteration"]}.items()})

    def close(self) -> None:
        import wandb

        try:
            self.run.finish()
        finally:
            # finish() only asks wandb's service to close the run; its transaction log (the .wandb file) is
            # flushed when the service gets to it. Tearing the service down waits for that, so the run folder
            # is complete (ready for `wandb sync`) when the command returns.
            wandb.teardown()


def emit(row: dict) -> None:
    """Log one metric row to the open logger, if any."""
    if _SINK is not None:
        _SINK.log(row)


@contextlib.contextmanager
def logging_to(kind: str | None, logdir: str | Path):
    """Open a logger (``kind`` None: none) for the rows made inside the block; on a data-parallel run only
    process 0 logs."""
    global _SINK
    if kind is None or int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    if kind not in LOGGERS:
        raise InputError(f"--log must be one of {', '.join(LOGGERS)} (got {kind!r})")
    sink = {"tensorboard": TensorBoard, "wandb": WandB}[kind](Path(logdir))
    _SINK = sink
    try:
        yield sink
    finally:
        _SINK = None
        sink.close()
