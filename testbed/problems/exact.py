"""Exact tools of the preference and reward problems (testbed/THEORY.md §E): the minimax winner by
linear programming, the KL-regularised equilibrium, the Bradley–Terry maximum-likelihood fit, and the
per-context KL divergence that every KL metric uses (clipped at 0: a KL is never negative, and
rounding would otherwise print values like -1e-17)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, root
from scipy.special import expit, log_expit, log_softmax, rel_entr


def kl_per_context(pi: np.ndarray, log_pi: np.ndarray | None, log_q: np.ndarray) -> np.ndarray:
    """KL(pi(.|x) || q(.|x)) per context (last axis = responses), >= 0. With ``log_pi`` the sum is in
    log space (exact for near-deterministic policies); else ``rel_entr`` on the probabilities."""
    if log_pi is None:
        per = rel_entr(pi, np.exp(log_q)).sum(axis=-1)
    else:
        per = np.sum(pi * np.where(pi > 0, log_pi - log_q, 0.0), axis=-1)
    return np.maximum(per, 0.0)


def minimax_winner(P: np.ndarray) -> np.ndarray:
    """Minimax winner of one context's preference matrix P [Y, Y] (P + Pᵀ = 1).

    LP (Swamy et al. 2024; Brandt, "maximal lotteries") on the antisymmetric game G = P − ½ scaled
    to max|G| = 1 (the winner is scale-free; the scale keeps HiGHS's absolute tolerances meaningful
    when nearly every pair is a tie): maximise v subject to sum_y pi(y)·G(y, y') ≥ v for every y',
    pi in the simplex; the value is 0. HiGHS solves it to ~1e-9 of the scale; the solution is then
    polished on its support S by solving the linear system G[S, S]·pi_S = 0, 1ᵀpi_S = 1, which is
    exact when the equilibrium is the unique one on S. The polished point is kept only if it is a
    valid distribution with no larger exploitability. All ties (G = 0): uniform, exploitability 0.
    """
    P = np.asarray(P, dtype=np.float64)
    Y = P.shape[0]
    G = P - 0.5
    scale = float(np.max(np.abs(G))) if Y else 0.0
    if scale == 0.0:
        return np.full(Y, 1.0 / Y)
    G = G / scale
    c = np.zeros(Y + 1)
    c[-1] = -1.0  # maximise v
    A_ub = np.hstack([-G.T, np.ones((Y, 1))])  # v − sum_y pi_y G[y, y'] ≤ 0
    A_eq = np.hstack([np.ones((1, Y)), np.zeros((1, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(Y), A_eq=A_eq, b_eq=[1.0],
                  bounds=[(0, None)] * Y + [(None, None)], method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:  # cannot happen for a valid P (a finite zero-sum game always has a value)
        raise RuntimeError(f"minimax LP failed: {res.message}")
    pi = np.clip(res.x[:Y], 0.0, None)
    pi /= pi.sum()

    def expl(q):
        return float(np.max(G @ q))

    S = np.flatnonzero(pi > 1e-7)
    A = np.vstack([G[np.ix_(S, S)], np.ones((1, len(S)))])
    b = np.concatenate([np.zeros(len(S)), [1.0]])
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    if np.all(sol >= 0):
        polished = np.zeros(Y)
        polished[S] = sol / sol.sum()
        if expl(polished) <= expl(pi) + 1e-15:
            pi = polished
    return pi


def regularised_minimax(P: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
    """Nash equilibrium pi*_tau of the KL-regularised preference game, one context (Munos et al. 2023).

    pi*_tau maximises min_pi' P(pi ≻ pi') − tau·KL(pi‖mu) + tau·KL(pi'‖mu); it is the unique fixed point
    pi = softmax(ln mu + P(· ≻ pi)/tau) (derived from the first-order conditions of the strongly
    concave–convex game), solved in log space with ``scipy.optimize.root`` to ~1e-14; where that fails (small
    tau: the map is stiff), by continuation in tau from max(1, tau), four steps per decade, each solve
    started at the previous solution. The residual is checked on the normalised logits (finite even where
    pi underflows).
    """
    P, log_mu = np.asarray(P, dtype=np.float64), np.log(np.asarray(mu, dtype=np.float64))

    def F(logit, t=tau):
        return logit - log_softmax(log_mu + P @ np.exp(log_softmax(logit)) / t)

    def solve(start, t):
        sol = root(F, start, args=(t,), method="hybr", tol=1e-15)
        return log_softmax(sol.x), sol

    logit, sol = solve(log_mu.copy(), tau)
    if np.max(np.abs(F(logit))) > 1e-10:  # small tau is stiff: continue from tau' = max(1, tau) down to tau
        logit = log_mu.copy()
        for t in np.geomspace(max(1.0, tau), tau, max(2, int(np.ceil(4 * np.log10(max(1.0, tau) / tau))) + 1)):
            logit, sol = solve(logit, t)
    if np.max(np.abs(F(logit))) > 1e-10:
        raise RuntimeError(f"regularised minimax fixed point did not converge: {sol.message}")
    return np.exp(logit)


def components(gram: np.ndarray) -> np.ndarray:
    """Whether responses y and y' are connected in each block's graph (edge y-y' iff gram[b, y, y'] != 0),
    [B, Y, Y] boolean: the closure of I + adjacency by ceil(log2 Y) boolean squarings, batched over blocks."""
    Y = gram.shape[-1]
    reach = (gram != 0) | np.eye(Y, dtype=bool)
    for _ in range(max(int(np.ceil(np.log2(Y))), 0)):
        r = reach.astype(np.float32)
        reach = np.matmul(r, r) > 0
    return reach


def _bt_objective(r: np.ndarray, wins: np.ndarray, Ws: np.ndarray, l2: float, derivatives: bool = True):
    """The negative BT log-likelihood plus the ridge of each block's rewards r [B, Y]; with ``derivatives`` also its
    gradient [B, Y] and Hessian [B, Y, Y]. ``wins`` = Ws·P, Ws the symmetrised pair weights. Every block's numbers
    come from its own rows only (a block's fit is the same in any batch)."""
    B = r.shape[0]
    d = r[:, :, None] - r[:, None, :]
    val = -np.sum((wins * log_expit(d)).reshape(B, -1), axis=1) + l2 * np.sum(r * r, axis=1)
    if not derivatives:
        return val
    sig = expit(d)
    grad = -np.sum(wins - Ws * sig, axis=2) + 2 * l2 * r  # Ws·(P − σ(d)) summed over y' (Ws symmetric, P + Pᵀ = 1)
    s = Ws * sig * sig.swapaxes(1, 2)  # σ(−d) = σ(d)ᵀ bit for bit: d is antisymmetric exactly (fl(a−b) = −fl(b−a))
    H = -s
    i = np.arange(r.shape[1])
    H[:, i, i] += np.sum(s, axis=2) + 2 * l2
    return val, grad, H


def _newton_step(H: np.ndarray, g: np.ndarray, reach: np.ndarray | None) -> np.ndarray:
    """The minimum-norm solution p of H·p = −g [B, Y] (``reach``: the connected sets spanning H's null space, or
    None when H is positive definite), solved with H scaled to unit diagonal, D^-½HD^-½, so that the rows of
    responses with tiny comparison weights (π_ref near 0) keep their relative accuracy; the scaled null space
    D^½1_c is filled by D^½1_c1_cᵀD^½/(1_cᵀD1_c), and each set's mean of p is then removed (p + const·1_c
    solves the same system)."""
    d = np.diagonal(H, axis1=1, axis2=2).copy()
    d[d <= 0] = 1.0  # a response compared with none (its row of H is 0)
    sq = np.sqrt(d)
    A = H / sq[:, :, None] / sq[:, None, :]
    if reach is not None:
        A = A + reach * sq[:, :, None] * sq[:, None, :] / np.sum(reach * d[:, None, :], axis=2)[:, :, None]
    p = np.linalg.solve(A, (-g / sq)[..., None])[..., 0] / sq
    if reach is not None:
        p = p - np.sum(reach * p[:, None, :], axis=2) / np.sum(reach, axis=2)
    return p


def bradley_terry_fit(P: np.ndarray, pair_weights: np.ndarray | None = None, x0: np.ndarray | None = None,
                      l2: float = 0.0, gtol: float = 1e-12, maxiter: int = 1000) -> np.ndarray:
    """Bradley–Terry maximum-likelihood rewards of a preference tensor (the population reward model).

    Per context, maximises the expected log-likelihood of comparisons (y, y') drawn with weights
    w(y, y') (default pi_ref ⊗ pi_ref = uniform), each labelled y ≻ y' with probability P(y ≻ y'):

        L(r) = sum_{y,y'} w(y,y')·[P(y≻y')·ln σ(r_y − r_y') + P(y'≻y)·ln σ(r_y' − r_y)] − l2·|r|²

    (Bradley & Terry 1952; the reward-model step of RLHF, Ouyang et al. 2022). L is concave, and symmetric in the
    responses' labels. With l2 = 0, r is identified up to a constant on each set of responses connected by
    comparisons of positive weight: Newton's minimum-norm step (the Hessian plus the projector onto those sets'
    indicators is solved, testbed/THEORY.md §E) moves no set's mean, so each keeps the mean of ``x0`` (default 0)
    on it; with l2 > 0 the maximiser is unique and has mean 0. The result is centred to mean 0 per context.
    Newton's method with Armijo backtracking, every context of the batch at once, each stopping on its own once its
    gradient is below ``gtol`` (or the step at rounding level) and the steps no longer shrink quadratically, or
    after ``maxiter`` steps. Deterministic transitive data (P ∈ {0, 1}) has no finite MLE unless l2 > 0: the fit
    stops where the gradient falls below ``gtol``.

    Args:
      P: preferences [X, Y, Y] (or [Y, Y]).
      pair_weights: w [X, Y, Y] or [Y, Y], non-negative (default uniform).
      x0: starting rewards [X, Y] or [Y].
    Returns: rewards [X, Y] (or [Y]), mean zero per context. A context's result does not depend on the
    other contexts given with it.
    """
    P = np.asarray(P, dtype=np.float64)
    single = P.ndim == 2
    P = P[None] if single else P
    X, Y, _ = P.shape
    W = np.ones((X, Y, Y)) / Y**2 if pair_weights is None else np.broadcast_to(pair_weights, (X, Y, Y))
    z = np.zeros((X, Y)) if x0 is None else np.array(np.broadcast_to(np.asarray(x0, dtype=np.float64), (X, Y)))
    Ws = W + W.swapaxes(1, 2)  # each unordered comparison, either order
    wins = Ws * P
    reach = components(Ws) if l2 == 0 else None  # with l2 = 0 the Hessian's null space: each connected set's 1_c
    active, prev = np.arange(X), np.full(X, np.inf)
    for _ in range(maxiter):
        val, g, H = _bt_objective(z[active], wins[active], Ws[active], l2)
        step = _newton_step(H, g, None if reach is None else reach[active])
        size = np.max(np.abs(step), axis=1)
        near = (np.sqrt(np.sum(g * g, axis=1)) <= gtol) | (size <= 1e-12 * np.maximum(1.0, np.max(np.abs(z[active]), axis=1)))
        going = ~(near & (size >= prev[active] / 2) | (size == 0))  # near, and the step no longer shrinks quadratically
        active, val, g, step, size = active[going], val[going], g[going], step[going], size[going]
        if not active.size:
            break
        prev[active] = size
        slope = np.sum(g * step, axis=1)  # −(Newton decrement)²
        t = np.ones(len(active))
        search = -slope > 1e-13 * np.maximum(1.0, np.abs(val))  # else the decrease is below rounding: a full step
        z[active[~search]] += step[~search]
        todo = np.flatnonzero(search)
        for _ in range(60):  # Armijo: halve each context's step until its objective decreases enough
            if not todo.size:
                break
            trial = z[active[todo]] + t[todo, None] * step[todo]
            ok = (_bt_objective(trial, wins[active[todo]], Ws[active[todo]], l2, False)
                  <= val[todo] + 1e-4 * t[todo] * slope[todo])
            z[active[todo[ok]]] = trial[ok]
            todo = todo[~ok]
            t[todo] *= 0.5
        active = np.setdiff1d(active, active[todo])  # no decrease along the Newton step: at rounding level
    out = z - z.mean(axis=1, keepdims=True)
    return out[0] if single else out


