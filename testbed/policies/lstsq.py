"""Least-squares steps shared by the sampled solvers (sampled REBEL, sampled NPG, REBEL on preferences).

They take one policy's samples (x [N]) or a stack's (x [S, N], rows [S, N, k], targets [S, N]); one
policy is solved as a stack of one, so member s of a stack gets bit-for-bit its unstacked solution.

Tabular rows of the form e_y - e_y' (REBEL's score differences) can be passed as :class:`PairRows`
(the indices only): the Gram matrix is then counted from the (context, y, y') pairs — integer
entries, so exactly the dense sum — and no N x Y array is built. With many responses (Y >
``DUAL_Y``) the block solve runs on the n_b x n_b matrix G_b·G_bᵀ of each context's own rows instead
of the Y x Y Gram matrix (the same non-zero eigenvalues, G⁺ = Gᵀ(GGᵀ)⁺): memory O(N·Y + X·Y) for
dense rows, O(N + X·Y) for pairs, never X·Y² or N·Y².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.policies import LogLinear, Policy, TabularSoftmax, one_hot
from testbed.policies.lstsq_onehot import pair_solve

DUAL_Y = 256
"""Tabular blocks with more responses than this are solved through G_b·G_bᵀ (see the module docstring)."""
EIG_RTOL = 1e-9


@dataclass
class PairRows:
    """Tabular rows e_y - e_y' given by their indices y, y2 ([N] or [S, N]) and the number of responses."""

    y: np.ndarray
    y2: np.ndarray
    num_actions: int

    def dense(self) -> np.ndarray:
        return one_hot(self.y, self.num_actions) - one_hot(self.y2, self.num_actions)


def _ranks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stable order of rows by block and each row's position within its block (in that order)."""
    order = np.argsort(blocks, kind="stable")
    sb = blocks[order]
    first = np.r_[0, np.flatnonzero(sb[1:] != sb[:-1]) + 1]
    rank = np.arange(len(sb)) - np.repeat(first, np.diff(np.r_[first, len(sb)]))
    return order, rank


def _block_sums(num_blocks: int, blocks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """sum_i values[i] per block, accumulated row by row in index order within each block — the same
    additions as ``np.add.at`` (so the same bits), in max-rows-per-block vectorised passes."""
    out = np.zeros((num_blocks,) + values.shape[1:])
    if len(blocks) == 0:
        return out
    order, rank = _ranks(blocks)
    for k in range(int(rank.max()) + 1):
        i = order[rank == k]
        out[blocks[i]] += values[i]
    return out


def _pair_gram(num_blocks: int, blocks: np.ndarray, rows: PairRows, targets: np.ndarray):
    """The Gram matrices and right-hand sides of rows e_y - e_y' by counting (block, y, y') pairs."""
    Y = rows.num_actions
    y, y2 = rows.y.ravel(), rows.y2.ravel()
    moved = y != y2  # a pair with y = y' is a zero row
    b, y, y2, t = blocks[moved], y[moved], y2[moved], targets[moved]
    ends = np.stack([b * Y + y, b * Y + y2], axis=1).ravel()  # the pair's two entries, pair by pair in order
    # -(c[y, y'] + c[y', y]) off the diagonal (integers: exact), the degree on it; + 0.0: untouched entries +0.0
    gram = np.bincount(ends * Y + np.stack([y2, y], axis=1).ravel(), minlength=num_blocks * Y * Y).astype(float)
    gram = -gram + 0.0
    gram = gram.reshape(num_blocks, Y * Y)
    gram[:, ::Y + 1] = np.bincount(ends, minlength=num_blocks * Y).reshape(num_blocks, Y)
    rhs = np.bincount(ends, weights=np.stack([t, -t], axis=1).ravel(), minlength=num_blocks * Y)  # +t at y, -t at y'
    return gram.reshape(num_blocks, Y, Y), rhs.reshape(num_blocks, Y)


def _solve_gram(gram, rhs, ridge, groups, Y):
    per_group = (groups, len(gram) // groups)
    if ridge > 0:
        scale = np.trace(gram, axis1=1, axis2=2).reshape(per_group).sum(axis=1) / (per_group[1] * Y)
        scale = np.repeat(scale, per_group[1])[:, None, None]
        delta = np.linalg.solve(gram + ridge * np.where(scale > 0, scale, 1.0) * np.eye(Y), rhs[..., None])[..., 0]
        return np.where(scale[:, :, 0] > 0, delta, 0.0)  # a problem whose rows are all zero: no step
    w, v = np.linalg.eigh(gram)
    top = np.maximum(w.reshape(groups, -1).max(axis=1), 0.0)
    keep = w > EIG_RTOL * np.repeat(top, per_group[1])[:, None]
    inv = np.divide(1.0, w, out=np.zeros_like(w), where=keep)
    proj = np.matmul(np.swapaxes(v, -1, -2), rhs[..., None])[..., 0]
    return np.matmul(v, (inv * proj)[..., None])[..., 0]


def _solve_dual(num_blocks, blocks, rows, targets, ridge, groups, Y):
    """The same solution through each block's n_b x n_b kernel K_b = G_b·G_bᵀ: delta_b = G_bᵀ·K_b⁺·t_b
    (eigenvalues cut relative to the largest of the problem, as the Gram path), or with ``ridge``
    G_bᵀ(K_b + lam·s·I)⁻¹t_b (push-through identity), s = tr(K)/(blocks·Y) summed over the problem."""
    order, rank = _ranks(blocks)
    sb = blocks[order]
    present, start = np.unique(sb, return_index=True)
    parts, eig = [], []
    for b, lo, hi in zip(present, start, np.r_[start[1:], len(sb)]):
        i = order[lo:hi]
        if isinstance(rows, PairRows):
            y, y2 = rows.y.ravel()[i], rows.y2.ravel()[i]
            eq = lambda a, c: (a[:, None] == c[None, :]).astype(float)  # noqa: E731
            K = eq(y, y) - eq(y, y2) - eq(y2, y) + eq(y2, y2)
        else:
            G = rows[i]
            K = G @ G.T
        parts.append((b, i, K))
        eig.append(None if ridge > 0 else np.linalg.eigh(K))
    per = num_blocks // groups
    delta = np.zeros((num_blocks, Y))
    if ridge > 0:
        trace = np.zeros(groups)
        for b, _, K in parts:
            trace[b // per] += np.trace(K)
        scale = trace / (per * Y)
    else:
        top = np.zeros(groups)
        for (b, _, _), (w, _) in zip(parts, eig):
            top[b // per] = max(top[b // per], w[-1])
    for (b, i, K), e in zip(parts, eig):
        t = targets[i]
        if ridge > 0:
            s = scale[b // per]
            if s <= 0:
                continue
            alpha = np.linalg.solve(K + ridge * s * np.eye(len(K)), t)
        else:
            w, v = e
            keep = w > EIG_RTOL * top[b // per]
            alpha = v @ (np.divide(1.0, w, out=np.zeros_like(w), where=keep) * (v.T @ t))
        if isinstance(rows, PairRows):
            delta[b] = (np.bincount(rows.y.ravel()[i], weights=alpha, minlength=Y)
                        - np.bincount(rows.y2.ravel()[i], weights=alpha, minlength=Y))
        else:
            delta[b] = rows[i].T @ alpha
    return delta


def _block_lstsq(num_blocks: int, blocks: np.ndarray, rows, targets: np.ndarray,
                 ridge: float = 0.0, groups: int = 1) -> np.ndarray:
    """Minimum-norm least squares with block-diagonal design.

    Row i lives in block ``blocks[i]``; solves min_delta sum_i (rows[i]·delta[blocks[i]] - targets[i])²
    block by block, delta_b = pinv(G_bᵀG_b)·G_bᵀt_b (= G_b⁺ t_b), batched over blocks. Eigenvalues
    below 1e-9 x the largest of *all* blocks count as zero, so a block whose rows are rounding noise
    (e.g. demeaned rows of a context where one response was always drawn) gets no step; a block
    with no rows gets delta = 0. With ``ridge`` = lam > 0 it solves (GᵀG + lam·s·I)·delta = Gᵀt,
    s = tr(GᵀG)/(blocks·Y) the mean eigenvalue, so lam is relative to the problem's scale.
    ``groups`` independent problems of num_blocks/groups consecutive blocks each (a stack of
    policies): "all blocks" and s are then per problem. ``rows`` [N, Y] or :class:`PairRows`.
    """
    Y = rows.num_actions if isinstance(rows, PairRows) else rows.shape[1]
    if Y > DUAL_Y:
        return _solve_dual(num_blocks, blocks, rows, targets, ridge, groups, Y)
    if isinstance(rows, PairRows):
        gram, rhs = _pair_gram(num_blocks, blocks, rows, targets)
        if ridge == 0:
            return pair_solve(gram, rhs)  # the Laplacian of each context's pair graph: one LU solve, no eigh
    else:
        gram = _block_sums(num_blocks, blocks, rows[:, :, None] * rows[:, None, :])
        rhs = _block_sums(num_blocks, blocks, rows * targets[:, None])
    return _solve_gram(gram, rhs, ridge, groups, Y)


def _demean_by_context(x: np.ndarray, a: np.ndarray, num_contexts: int) -> np.ndarray:
    """Subtract from each row the mean of the rows that share its context, taken relative to the context's first
    row (the same in exact arithmetic): rows equal to each other — a context where one response was always
    drawn — demean to exactly 0, not to the rounding of sum/n, which a solver whose every block is such noise
    would invert (sampled NPG at eta = 10 took steps of 500 and more that way)."""
    first = np.zeros(num_contexts, dtype=np.intp)
    seen, index = np.unique(x, return_index=True)  # each context's first row
    first[seen] = index
    a = a - a[first[x]]
    n = np.bincount(x, minlength=num_contexts)
    sums = _block_sums(num_contexts, x, a)
    return a - (sums / np.maximum(n, 1).reshape((-1,) + (1,) * (a.ndim - 1)))[x]


def lstsq_step(policy: Policy, x: np.ndarray, rows, targets: np.ndarray,
               context_intercept: bool = False, ridge: float = 0.0) -> tuple[Policy, np.ndarray]:
    """theta + delta, delta the min-norm solution of min sum_i (rows_i·delta [+ b_{x_i}] - targets_i)².

    ``rows`` are directions in score-feature space: for a tabular policy [N, Y] vectors inside the
    block of context x_i (or :class:`PairRows`, rows e_y - e_y'); for a log-linear policy [N, d]
    feature vectors. With ``context_intercept`` a free offset b_x per context is fitted too (by
    Frisch–Waugh: rows and targets demeaned within each context), i.e. a per-context baseline.
    ``ridge`` = lam > 0 damps the normal equations relative to their mean eigenvalue s:
    (GᵀG + lam·s·I)·delta = Gᵀt. Returns the new policy and the fitted values rows_i·delta
    (+ b_{x_i}). A stacked policy takes x [S, N], rows [S, N, k], targets [S, N] and solves each
    member's problem.
    """
    single = x.ndim == 1
    if single:
        x, targets = x[None], targets[None]
        rows = PairRows(rows.y[None], rows.y2[None], rows.num_actions) if isinstance(rows, PairRows) else rows[None]
    S, N = x.shape
    X = policy.params.shape[-2] if isinstance(policy, TabularSoftmax) else policy.features.shape[-3]
    flat = (np.arange(S)[:, None] * X + x).ravel()  # context x of member s is block s·X + x
    targets = targets.ravel()
    if isinstance(rows, PairRows) and (context_intercept or not isinstance(policy, TabularSoftmax)):
        rows = rows.dense()
    if not isinstance(rows, PairRows):
        rows = rows.reshape(S * N, -1)
    offset = 0.0
    if context_intercept:
        offset = targets - _demean_by_context(flat, targets, S * X)
        rows, targets = _demean_by_context(flat, rows, S * X), targets - offset
    if isinstance(policy, TabularSoftmax):
        delta = _block_lstsq(S * X, flat, rows, targets, ridge, groups=S)
        if isinstance(rows, PairRows):  # delta[block, y] - delta[block, y'] by flat index
            entries, Y = delta.reshape(-1), delta.shape[-1]
            fitted = np.take(entries, flat * Y + rows.y.ravel()) - np.take(entries, flat * Y + rows.y2.ravel())
        else:
            fitted = np.sum(rows * delta[flat], axis=-1)
        delta = delta.reshape(S, X, -1)
    elif isinstance(policy, LogLinear):
        G, t = rows.reshape(S, N, -1), targets.reshape(S, N, 1)
        d = G.shape[-1]
        if ridge > 0:
            gram = np.matmul(np.swapaxes(G, -1, -2), G)
            scale = np.trace(gram, axis1=-2, axis2=-1)[:, None, None] / d
            damp = ridge * np.where(scale > 0, scale, 1.0) * np.eye(d)
            delta = np.linalg.solve(gram + damp, np.matmul(np.swapaxes(G, -1, -2), t))[..., 0]
            delta = np.where(scale[:, :, 0] > 0, delta, 0.0)  # every row is zero: no information, no step
        else:  # G⁺t with numpy lstsq's cutoff (eps·max(N, d) relative to the largest singular value)
            delta = np.matmul(np.linalg.pinv(G, rtol=np.finfo(float).eps * max(N, d)), t)[..., 0]
        fitted = np.matmul(G, delta[..., None]).reshape(S * N)
    else:
        raise TypeError(f"least-squares steps need a tabular or log-linear policy (got {type(policy).__name__})")
    fitted = (fitted + offset).reshape(S, N)
    if single:
        return policy.with_params(policy.params + delta[0]), fitted[0]
    return policy.with_params(policy.params + delta), fitted
