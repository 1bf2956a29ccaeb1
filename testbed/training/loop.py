"""THE loop: for t = 1 … T, one update (collect a batch, solve the algorithm's loss), then a metrics row
at every evaluated iteration and a checkpoint every ``every`` iterations.

One run, a stack of seeds (the bandit back-end's batched mode), an LM run and the conformance harness
all go through :func:`train`; what differs is the ``step`` (which calls the algorithm's update on the
back-end's policy) and the ``record`` callback (which computes the track's metrics: exact bandit
metrics, or the LM statistics plus evaluation callbacks). The state is the caller's object with an
integer attribute ``t`` (iterations done), so a checkpointed state resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable


class NumericalError(RuntimeError):
    """A run produced NaN/inf (in its parameters or its loss); the last good checkpoint is kept."""


def train(state, iterations: int, step: Callable[[int], None], record: Callable[[int], None],
          eval_every: int = 1, save: Callable[[], None] | None = None, every: int = 0,
          after: Callable[[int], None] | None = None) -> None:
    """Advance ``state`` (``state.t`` = iterations done) to ``iterations``.

    ``step(t)`` performs update t and stores its result on the state; ``record(t)`` appends the row of
    iteration t (also iteration 0 of a fresh run); ``save()`` writes a checkpoint, called after every
    ``every``-th update but the last (a finished run is stored whole by its caller); ``after(t)`` runs
    last in each iteration (progress bars).
    """
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
