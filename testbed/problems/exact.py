"""Exact tools of the preference and reward problems (testbed/THEORY.md §E): the minimax winner by
linear programming, the KL-regularised equilibrium, the Bradley–Terry maximum-likelihood fit, and the
per-context KL divergence that every KL metric uses (clipped at 0: a KL is never negative, and
rounding would otherwise print values like -1e-17)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, minimize, root
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


def bradley_terry_fit(P: np.ndarray, pair_weights: np.ndarray | None = None, x0: np.ndarray | None = None,
                      l2: float = 0.0) -> np.ndarray:
    """Bradley–Terry maximum-likelihood rewards of a preference tensor (the population reward model).

    Per context, maximises the expected log-likelihood of comparisons (y, y') drawn with weights
    w(y, y') (default pi_ref ⊗ pi_ref = uniform), each labelled y ≻ y' with probability P(y ≻ y'):

        L(r) = sum_{y,y'} w(y,y')·[P(y≻y')·ln σ(r_y − r_y') + P(y'≻y)·ln σ(r_y' − r_y)] − l2·|r|²

    (Bradley & Terry 1952; the reward-model step of RLHF, Ouyang et al. 2022). L is concave; r is
    identified up to a constant, fixed by r_0 = 0 during the fit (the ridge l2 acts in that gauge),
    then centred to mean 0. Solved
    by ``scipy.optimize.minimize`` (trust-exact, analytic gradient and Hessian) from ``x0``
    (default 0). Deterministic transitive data (P ∈ {0, 1}) has no finite MLE unless l2 > 0.

    Args:
      P: preferences [X, Y, Y] (or [Y, Y]).
      pair_weights: w [X, Y, Y] or [Y, Y], non-negative (default uniform).
      x0: starting rewards [X, Y] or [Y].
    Returns: rewards [X, Y] (or [Y]), mean zero per context.
    """
    P = np.asarray(P, dtype=np.float64)
    single = P.ndim == 2
    P = P[None] if single else P
    X, Y, _ = P.shape
    W = np.ones((X, Y, Y)) / Y**2 if pair_weights is None else np.broadcast_to(pair_weights, (X, Y, Y))
    x0 = np.zeros((X, Y)) if x0 is None else np.broadcast_to(np.asarray(x0, dtype=np.float64), (X, Y))
    out = np.zeros((X, Y))
    for x in range(X):
        Ws = W[x] + W[x].T  # each unordered comparison, either order
        Px = P[x]

        def nll(z, Px=Px, Ws=Ws):
            r = np.concatenate([[0.0], z])
            d = r[:, None] - r[None, :]
            val = -np.sum(Ws * Px * log_expit(d)) + l2 * (r @ r)
            G = Ws * (Px - expit(d))  # −d val/d r_y = sum_y' G[y, y'] (Ws symmetric, P + Pᵀ = 1)
            grad = -G.sum(axis=1) + 2 * l2 * r
            s = Ws * expit(d) * expit(-d)
            H = np.diag(s.sum(axis=1)) - s + 2 * l2 * np.eye(Y)
            return val, grad[1:], H[1:, 1:]

        z0 = x0[x, 1:] - x0[x, 0]
        res = minimize(lambda z: nll(z)[0], z0, jac=lambda z: nll(z)[1], hess=lambda z: nll(z)[2],
                       method="trust-exact", options={"gtol": 1e-12, "maxiter": 1000})
        r = np.concatenate([[0.0], res.x])
        out[x] = r - r.mean()
    return out[0] if single else out


