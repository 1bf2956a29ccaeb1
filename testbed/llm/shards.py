"""One process that computes what K processes with sharded rollouts compute (``train.shards: K``).

With ``rollouts: sharded`` on K processes, process k samples its share of each batch of prompts (the k-th of K
contiguous parts) from its own torch RNG stream (seeded :func:`stream_seed`), computes the update's statistics
over its share alone (PPO's and RLOO's whitening, every per-batch mean), and DDP averages the K processes'
gradients at every optimiser step. ``train.shards: K`` on one process does the same computation: each shard's
update (``algorithm.lm_update``) runs on a view of the back-end as process k sees it (``world`` K, ``rank`` k), with
its own copy of the algorithm's state and its RNG stream; where the update calls the solver, the K shards meet, and
:meth:`~testbed.llm.backend.LMBackend.optimise_shards` steps on their K × G micro-batches together (the average of
the K shards' gradients). The metrics are then the K-process run's, up to float rounding (the order in which the
gradients are summed), and a test (tests/test_llm_shards.py) checks it against 2 processes over gloo.

Each shard's update runs in a thread of its own, but only while the main thread waits for it (one runs at a time),
so the shards never run concurrently: a thread is just where a shard's update waits for the others at the solver.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import queue
import threading

import numpy as np
import torch

from testbed.algorithms.base import Step
from testbed.llm.backend import LMBackend
from testbed.llm.distributed import rng_state, set_rng_state


def stream_seed(seed: int, rank: int) -> int:
    """The torch seed of process (or shard) ``rank``'s generation stream with sharded rollouts."""
    return seed * 1000 + rank


def trim(q: torch.Tensor, qm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts without the leading columns that are padding in every row: the shard's rows as
    encoding the shard's prompts alone gives them."""
    real = qm.bool().any(0).nonzero()
    first = int(real[0]) if len(real) else qm.shape[1]
    return q[:, first:], qm[:, first:]


class _Abort(BaseException):
    """Ends a shard's waiting update when another shard (or the joint step) failed."""


class _Shard(threading.Thread):
    """Shard k's update, run in its thread while the main thread waits: it stops at each solver call and at its end."""

    def __init__(self, algo, q, qm):
        super().__init__(daemon=True)
        self.algo, self.q, self.qm = algo, q, qm
        self.inbox, self.outbox = queue.Queue(), queue.Queue()

    def run(self) -> None:
        try:
            self.outbox.put(("done", self.algo.lm_update(self.q, self.qm)))
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, which raises it
            self.outbox.put(("error", e))

    def solve(self, request: tuple) -> float:
        """In the shard's thread: hand the solver call to the main thread, wait for this shard's mean loss."""
        self.outbox.put(("optimise", request))
        kind, value = self.inbox.get()
        if kind == "abort":
            raise _Abort
        return value

    def resume(self, value=None) -> tuple:
        """In the main thread: run the shard (from its start, or on from its solver call) until it stops again."""
        if self.ident is None:
            self.start()
        else:
            self.inbox.put(("loss", value))
        return self.outbox.get()


@dataclasses.dataclass
class _View(LMBackend):
    """The back-end as process k of K sees it; its solver calls wait for the other shards."""

    shard: _Shard | None = None
    parent: LMBackend | None = None

    def optimise(self, config, n: int, epochs: int, loss_fn) -> float:
        return self.shard.solve((config, n, epochs, loss_fn))

    def mean_over_minibatch(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over this shard's part of the minibatch (not over all K shards' parts, as K processes' would)."""
        return x[torch.as_tensor(self.parent.minibatch_index, dtype=torch.long, device=x.device)].mean()


class Shards:
    """The K shards of one run: their torch RNG streams (saved in its checkpoints), each process's algorithm state
    (``state_fields``: kept from one update to the next per shard, as each process keeps its own; a checkpoint saves
    process 0's, which every process resumes from, as a multi-process resume does) and their joint update."""

    def __init__(self, ctx: LMBackend, K: int, seed: int, state_fields: tuple[str, ...]):
        self.ctx, self.K, self.fields = ctx, K, state_fields
        self.states: list[dict] | None = None  # shard k's fields after the last update (None: all start as algo's)
        outer = rng_state()
        self.streams = []
        for k in range(K):
            torch.manual_seed(stream_seed(seed, k))
            self.streams.append(rng_state())
        set_rng_state(outer)

    @contextlib.contextmanager
    def stream(self, k: int):
        """Shard k's torch RNG stream is the global one inside."""
        set_rng_state(self.streams[k])
        try:
            yield
        finally:
            self.streams[k] = rng_state()

    def update(self, algo, q, qm) -> Step:
        """One update of ``algo`` on the batch (q, qm: every shard's prompts, None offline), as K processes make it."""
        K, ctx = self.K, self.ctx
        parts = [trim(q[i], qm[i]) for i in np.array_split(np.arange(len(q)), K)] if q is not None else [(None,) * 2] * K
        algos, shards = [], []
        fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(LMBackend)}
        for k in range(K):
            a = copy.copy(algo)  # process k's algorithm: its own state (the same at the start)
            for f in self.fields:
                if hasattr(algo, f):
                    setattr(a, f, copy.deepcopy(getattr(algo, f)) if self.states is None else self.states[k][f])
            shard = _Shard(a, *parts[k])
            a.ctx = _View(**{**fields, "world": K, "rank": k}, shard=shard, parent=ctx)
            algos.append(a)
            shards.append(shard)
        try:
            msgs = self._segments(shards, [None] * K)
            while msgs[0][0] == "optimise":
                (config, n, epochs, _), *rest = [m[1] for m in msgs]
                if any(r[:3] != (config, n, epochs) for r in rest):
                    raise RuntimeError("train.shards: the shards called the solver with different settings")
                losses = ctx.optimise_shards(config, n, epochs, [m[1][3] for m in msgs], enter=self.stream)
                msgs = self._segments(shards, losses)
        finally:
            for s in shards:
                if s.is_alive():
                    s.inbox.put(("abort", None))
                    s.join()
        self.states = [{f: getattr(a, f) for f in self.fields if hasattr(a, f)} for a in algos]
        for f, v in self.states[0].items():  # process 0's state on the run's algorithm (what a checkpoint saves)
            setattr(algo, f, copy.deepcopy(v))
        return merge([m[1] for m in msgs])

    def _segments(self, shards: list[_Shard], values: list) -> list[tuple]:
        """Run every shard on until it stops, each in its RNG stream and from the same numpy RNG state (the
        processes' numpy RNGs draw alike); the numpy RNG ends as shard 0's. All must stop alike."""
        rng = self.ctx.rng.bit_generator
        start, end, msgs = rng.state, None, []
        for k, (s, v) in enumerate(zip(shards, values)):
            rng.state = start
            with self.stream(k):
                msgs.append(s.resume(v))
            end = rng.state if k == 0 else end
            if msgs[-1][0] == "error":
                raise msgs[-1][1]
        rng.state = end
        if len({m[0] for m in msgs}) > 1:
            raise RuntimeError("train.shards: some shards called the solver where others returned")
        return msgs


def merge(steps: list[Step]) -> Step:
    """The K shards' steps as one: responses and queries added, each statistic the shards' values in order (what
    gathering the K processes' gives), the loss the shards' mean (in float32, as the rows gather it)."""
    losses = [s.loss for s in steps]
    loss = None if None in losses else float(torch.tensor(losses, dtype=torch.float32).mean())
    queries = None if any(s.queries is None for s in steps) else sum(s.queries for s in steps)
    extras = {k: torch.cat([torch.as_tensor(s.extras[k]).reshape(-1) for s in steps]) for k in steps[0].extras}
    return Step(None, loss, sum(s.samples for s in steps), queries, extras)
