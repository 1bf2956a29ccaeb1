"""Random draws of a stack of seeds as one array computation, with each seed's own random numbers.

Each seed's generator is called once per draw, in the order one seed draws alone (N uniforms at a time,
so a single ``rng.random(k·N)`` gives the same numbers as k calls of ``rng.random(N)``), and what is
computed from the uniforms — contexts by the inverse CDF of rho, responses by the inverse CDF of pi_t,
oracle labels — runs on the whole stack: member s gets bit for bit the draws of its run alone. These
functions compose :meth:`TabularBandit.sample_contexts`, :meth:`Policy.sample`,
:func:`testbed.datasets.sample_distinct` and :meth:`PreferenceOracle.label`; where any of those is
replaced (a subclass, a conformance view) the callers take the seed-by-seed path instead.
"""

from __future__ import annotations

import numpy as np

from testbed.datasets import PreferenceOracle, sample_distinct
from testbed.policies import SHORT_AXIS, Policy, count_at_most, inverse_cdf, take_contexts
from testbed.problems import PreferenceBandit, TabularBandit

_CONTEXTS = (TabularBandit.sample_contexts, PreferenceBandit.sample_contexts)  # both rng.choice(X, p=rho)'s draws
_BASE = (TabularBandit.sample_contexts, Policy.sample, sample_distinct, PreferenceOracle.label, PreferenceOracle.prob)


def contexts_from_uniforms(rho: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The contexts that uniforms u select by :meth:`TabularBandit.sample_contexts`' inverse CDF (rho [X], u [N];
    or a stack, rho [S, X], u [S, N]): the number of entries of cdf = cumsum(rho)/total at most u."""
    cdf = np.cumsum(rho, axis=-1)
    cdf /= cdf[..., -1:]
    if u.ndim == 1:
        return cdf.searchsorted(u, side="right")
    if cdf.shape[-1] <= SHORT_AXIS:  # each member's count against its own row, on the whole stack
        return count_at_most(cdf[:, None, :], u)
    if np.all(cdf == cdf[:1]):  # one rho for every member (seeds of one problem): one search for the stack
        return cdf[0].searchsorted(u, side="right")
    return np.stack([c.searchsorted(v, side="right") for c, v in zip(cdf, u)])  # member by member


def base_contexts(problem) -> bool:
    """Whether the problem (every member of a stack) draws contexts by the base inverse CDF."""
    return all(type(m).sample_contexts in _CONTEXTS for m in getattr(problem, "members", [problem]))


def online_pairs(policy: Policy, rng, problem, oracles: list, n: int, law: str, distinct_fn) -> tuple | None:
    """DPO's online round for one seed (``rng`` a generator) or a stack (a list): x ~ rho, y ~ pi_t, y' ~ pi_t
    (given y' != y for ``law`` "distinct"), labelled by each member's oracle; None where a composed function is
    replaced (``distinct_fn``: the caller's ``sample_distinct``)."""
    if not (base_contexts(problem) and type(policy).sample is _BASE[1] and distinct_fn is _BASE[2]
            and all(type(o).label is _BASE[3] and type(o).prob is _BASE[4] for o in oracles)):
        return None
    gens = rng if isinstance(rng, list) else [rng]
    u = np.stack([g.random(4 * n) for g in gens]).reshape(len(gens), 4, n)
    if not isinstance(rng, list):
        u = u[0]
    u = np.moveaxis(u, -2, 0)  # [4, (S,) N]: the contexts', y's, y''s and the label's uniforms
    x = contexts_from_uniforms(problem.rho, u[0])
    X, Y = problem.num_contexts, problem.num_actions
    if x.shape[-1] < X or type(policy).log_probs_at is not Policy.log_probs_at:
        y, y2 = _pair_rows(np.exp(policy.log_probs_at(x)), u[1], u[2], law)
    else:  # the rows' CDFs from the table (log_probs_at gathers its rows): the same numbers, no N x Y array
        probs = np.exp(policy.log_probs())
        flat = flat_rows(x, X)
        columns = cdf_columns(np.cumsum(probs, axis=-1))
        y = cdf_draw(columns, flat, u[1])
        if law == "independent":
            y2 = cdf_draw(columns, flat, u[2])
        elif x.shape[-1] < X * Y:
            _, y2 = _pair_rows(take_contexts(probs, x), None, u[2], law, y)
        else:  # every (x, y)'s row with y removed, once: [.., X, Y, Y]
            y2 = cdf_draw(cdf_columns(np.cumsum(_without_each(probs), axis=-1)), flat * Y + y, u[2])
    if isinstance(rng, list):
        P = np.stack([o.P for o in oracles])
        p = P[np.arange(len(gens))[:, None], x, y, y2]
    else:
        p = oracles[0].P[x, y, y2]
    win = u[3] < p
    return x, np.where(win, y, y2), np.where(win, y2, y)


def _pair_rows(probs: np.ndarray, u: np.ndarray | None, u2: np.ndarray, law: str, y: np.ndarray | None = None):
    """y ~ probs rows [.., N, Y] at uniforms u (unless given), y' at u2: the same row (``law`` "independent") or
    :func:`testbed.datasets.sample_distinct`'s row: y's mass removed, uniform over the others where none is left."""
    if y is None or law == "independent":  # (the rows' own CDF: not needed for a distinct y' after a given y)
        cdf = np.cumsum(probs, axis=-1)
        y = inverse_cdf(cdf, u) if y is None else y
        if law == "independent":
            return y, inverse_cdf(cdf, u2)
    q = probs.copy()
    np.put_along_axis(q, y[..., None], 0.0, axis=-1)
    empty = q.sum(axis=-1) <= 0
    q[empty] = 1.0
    np.put_along_axis(q, y[..., None], 0.0, axis=-1)
    return y, inverse_cdf(np.cumsum(q, axis=-1), u2)


def _without_each(probs: np.ndarray) -> np.ndarray:
    """[.., X, Y, Y]: row (x, y) is probs[.., x, :] with entry y set to 0 (all others 1 where that leaves nothing),
    the rows :func:`_pair_rows` builds for a distinct y' after y."""
    off = 1.0 - np.eye(probs.shape[-1])
    q = probs[..., None, :] * off
    empty = q.sum(axis=-1) <= 0
    q[empty] = np.broadcast_to(off, q.shape)[empty]
    return q


def at(table: np.ndarray, *idx: np.ndarray) -> np.ndarray:
    """table[x_i, y_i, ...] for one problem; table[s, x_si, y_si, ...] for a stack (idx [S, N] each)."""
    if idx[0].ndim == 1:
        return table[idx]
    if len(idx) != table.ndim - 1:
        return table[(np.arange(len(idx[0]))[:, None],) + idx]
    flat = np.arange(len(idx[0]))[:, None]
    for i, n in zip(idx, table.shape[1:]):  # one flat index, one 1-d gather (as cdf_draw)
        flat = flat * n + i
    return table.reshape(-1)[flat.reshape(-1)].reshape(flat.shape)


def pick(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rows[..., i, y_i]: one entry per row (rows [..., N, Y], indices [..., N])."""
    return np.take_along_axis(rows, y[..., None], axis=-1)[..., 0]


def flat_rows(x: np.ndarray, num_contexts: int) -> np.ndarray:
    """Row s·X + x of a stack's [S·X, ...] table for context x of member s (x itself for one problem)."""
    return x if x.ndim == 1 else np.arange(len(x))[:, None] * num_contexts + x


def table_draws(policy: Policy, x: np.ndarray, uniforms: list, num_contexts: int, known: tuple = ()) -> tuple[list, list]:
    """Responses y ~ pi_t(.|x) by :func:`inverse_cdf` of each array of ``uniforms`` ([N] or a stack's [S, N]),
    and ln pi_t(y|x) of those and of the ``known`` responses. With at least as many draws as contexts from
    the whole table (cumsum(exp(.)) once per context, each CDF column compared with its entries gathered per
    draw: the comparisons of :func:`inverse_cdf` on the gathered rows, so the same indices, without an
    N x Y array), else row by row."""
    if x.shape[-1] < num_contexts:
        log_pi = policy.log_probs_at(x)
        cdf = np.cumsum(np.exp(log_pi), axis=-1)
        ys = [inverse_cdf(cdf, u) for u in uniforms]
        return ys, [pick(log_pi, y) for y in (*ys, *known)]
    table = policy.log_probs()
    flat = flat_rows(x, num_contexts)
    columns = cdf_columns(np.cumsum(np.exp(table), axis=-1))
    ys = [cdf_draw(columns, flat, u) for u in uniforms]
    entries = table.reshape(-1)
    return ys, [entries[flat * table.shape[-1] + y] for y in (*ys, *known)]


def cdf_columns(cdf: np.ndarray) -> np.ndarray:
    """The columns of CDF rows [..., X, Y] as contiguous arrays [Y, (S·)X], for :func:`cdf_draw`."""
    return np.ascontiguousarray(np.moveaxis(cdf, -1, 0).reshape(cdf.shape[-1], -1))


def cdf_draw(columns: np.ndarray, flat: np.ndarray, u: np.ndarray) -> np.ndarray:
    """:func:`inverse_cdf` of the rows ``flat`` of a CDF table (``columns`` from :func:`cdf_columns`) at
    uniforms u: u scaled by each row's total, counted against the row's entries one column at a time (in int8
    while rows are short enough: an eighth of the memory traffic of intp counts, about 1.7x faster)."""
    rows = flat.reshape(-1)  # (a 1-d gather: numpy's fancy index on an [S, N] array of indices is ~1.5x slower)
    v = u.reshape(-1) * columns[-1][rows]
    count = np.zeros(rows.shape, dtype=np.int8 if len(columns) < 128 else np.intp)
    for column in columns:
        count += v >= column[rows]
    return np.minimum(count, len(columns) - 1).astype(np.intp).reshape(flat.shape)


def policy_samples(policy: Policy, rng, problem, n: int) -> tuple | None:
    """x ~ rho, y ~ pi_t and the sampled rewards r(x, y) (+ noise) of one seed (``rng`` a generator) or a stack
    (a list; ``problem`` a ProblemBatch), with ln pi_t(y|x): each generator gives the n + n uniforms and the n
    normals of :meth:`TabularBandit.sample_contexts`, :meth:`Policy.sample` and
    :meth:`TabularBandit.sample_rewards` one after the other; None where one of those is replaced."""
    members = getattr(problem, "members", [problem])
    if not (base_contexts(problem) and type(policy).sample is _BASE[1]
            and all(type(m).sample_rewards is TabularBandit.sample_rewards for m in members)):
        return None
    stacked = isinstance(rng, list)
    gens = rng if stacked else [rng]
    u = np.stack([g.random(2 * n) for g in gens])
    noisy = np.array([m.noise_std > 0 for m in members])
    noise = np.stack([g.standard_normal(n) if m.noise_std > 0 else np.zeros(n) for g, m in zip(gens, members)])
    if not stacked:
        u, noise, noisy = u[0], noise[0], noisy[0]
    x = contexts_from_uniforms(problem.rho, u[..., :n])
    (y,), (lp,) = table_draws(policy, x, [u[..., n:]], problem.num_contexts)
    r = at(problem.rewards, x, y)
    if np.any(noisy):
        r = with_noise(problem, r, noise)
    return x, y, r, lp


def with_noise(problem, r: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """r + std·e where the problem (a stack's member) has reward noise — :meth:`TabularBandit.sample_rewards`'
    arithmetic — and r as drawn where it has none (r, noise [N], or a stack's [S, N])."""
    members = getattr(problem, "members", None)
    if members is None:
        return r + problem.noise_std * noise if problem.noise_std > 0 else r
    has = np.array([m.noise_std > 0 for m in members])[:, None]
    return np.where(has, r + np.asarray(problem.noise_std)[:, None] * noise, r)
