"""THE loop: for t = 1 … T, one update (collect a batch, solve the algorithm's loss), then a metrics row
at every evaluated iteration and a checkpoint every ``every`` iterations.

One run, a stack of seeds (the bandit back-end's batched mode), an LM run and the conformance harness
all go through :func:`train`; what differs is the ``step`` (which calls the algorithm's update on the
back-end's policy) and the ``record`` callback (which computes the track's metrics: exact bandit
metrics, or the LM statistics plus evaluation callbacks). The state is the caller's object with an
integer attribute ``t`` (iterations done), so a checkpointed state resumes where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` (0: left as they are) for the ``with`` block, and given back after
    it: a run called in-process (a test, a notebook) leaves the caller's thread count as it found it. Yields the
    count in use."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


class NumericalError(RuntimeError):
    """A run produced NaN/inf (in its parameters, its loss or a metric); the last good checkpoint is kept."""


def check_finite(run_ids, t: int, values: dict, checkpoint: Path | None = None) -> None:
    """Raise :class:`NumericalError` (one line: the run, the quantity, its value, the iteration, and the last
    good checkpoint when one exists) if a value is NaN or infinite. ``run_ids``: one id, or the ids of a stack
    whose values have the stack as leading axis."""
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    for name, v in values.items():
        if v is None:
            continue
        a = np.asarray(v, dtype=float)
        if np.isfinite(a).all():
            continue
        member = 0 if len(ids) == 1 or a.ndim == 0 else int(np.argmin(np.isfinite(a.reshape(len(ids), -1)).all(axis=1)))
        bad = a.reshape(-1)[int(np.argmin(np.isfinite(a.reshape(-1))))]
        where = (f"; its last good checkpoint is {checkpoint}" if checkpoint is not None and Path(checkpoint).is_file()
                 else "; no checkpoint was written before it")
        raise NumericalError(f"run {ids[member]}: {name} became {bad} at iteration {t}{where}")


def train(state, iterations: int, step: Callable[[int], None], record: Callable[[int], None],
          eval_every: int = 1, save: Callable[[], None] | None = None, every: int = 0,
          after: Callable[[int], None] | None = None) -> None:
    """Advance ``state`` (``state.t`` = iterations done) to ``iterations``.

    ``step(t)`` performs update t and stores its result on the state; ``record(t)`` appends the row of
    iteration t (also iteration 0 of a fresh run); ``save()`` writes a checkpoint, called after every
    ``every``-th update but the last (a finished run is stored whole by its caller); ``after(t)`` runs
    last in each iteration (progress bars).
    """
    with np.errstate(all="ignore"):  # a non-finite result is reported by the callers' check_finite, in one line
        _train(state, iterations, step, record, eval_every, save, every, after)


def _train(state, iterations, step, record, eval_every, save, every, after) -> None:
    if state.t == 0:
        record(0)
    while state.t < iterations:
        t = state.t + 1
        step(t)
        state.t = t
        if t % eval_every == 0 or t == iterations:
            record(t)
        if save is not None and every and t % every == 0 and t < iterations:
            save()
        if after is not None:
            after(t)
