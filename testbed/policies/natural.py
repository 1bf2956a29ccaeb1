"""The exact (population) step of a log-linear policy: the minimum-norm solution of a weighted
least-squares fit of the reward by the features, solved so that it stays exact near determinism.

Exact NPG solves F·delta = eta·∇J with F = E_x Cov_{pi(.|x)}(φ), ∇J = E_x Cov_{pi(.|x)}(φ, q); exact
REBEL solves the normal equations A·delta = eta·b of its population regression, A = E[ΔφΔφᵀ],
b = E[Δφ·Δq] with y ~ pi_t, y' ~ mu (testbed/THEORY.md §C). Both are the min-norm solution of

    min_delta  sum_rows w_k·(delta·u_k - eta·v_k)²

and both are solved here the same way (:func:`natural_step`), in two stages:

1. **Realisable case, weight-free.** The fit is exact (zero residual) iff some delta satisfies
   delta·(φ(x, y) - φ(x, 0)) = q(x, y) - q(x, 0) for every context with rho(x) > 0 (pi_t and mu
   have full support, so every difference is observed). That set — and its minimum-norm element —
   does not depend on the weights rho·pi_t·mu at all, so it is solved on the unweighted
   feature-difference system: nothing is lost when pi_t is near-deterministic (weights 1e-40 or
   subnormal), and with one-hot features the step is the tabular closed form exactly. The system is
   accepted as realisable when its residual is below ``FIT_RTOL`` = 1e-10 of the largest reward
   difference (rounding puts a realisable system's residual near 1e-15 of it).
2. **Otherwise, weighted.** The fit is solved on the square-root-weighted, *centred* rows (per
   context φ - E_pi φ with targets q - E_pi q, for REBEL also φ - E_mu φ and the mean difference),
   whose Gram matrix is F (or A) and whose right-hand side is ∇J (or b): no raw second moments
   minus products of means, so nothing cancels; a rescale by the largest entry keeps subnormal
   weights representable. The matrix is never squared, so the singular values seen are square
   roots of the Fisher eigenvalues.

The cut-off (``RTOL``): singular values below 1e-12 of the largest are treated as zero. A kept
direction with singular value s carries relative error ≈ eps·s_max/s ≤ 1e-4; rounding-level null
directions of a rank-deficient design sit near sqrt(rows)·eps·s_max ≈ 1e-14 — two orders below the
cut. In Fisher terms the old cut (eigenvalues of F below 1e-12 of the largest) is now 1e-24. The
regime that remains: a non-realisable problem whose Fisher eigenvalues span more than 24 orders of
magnitude (responses with pi_t ≲ 1e-24 that alone pin a direction) — there float64 cannot identify
that direction, and its step is taken as zero (the minimum-norm choice).

**Large, well-conditioned systems** (rows·d² >= ``FAST_WORK``, weighted Gram eigenvalues within
1/``GRAM_RCOND``) skip stage 1: the weighted system then has a unique least-squares solution, which
in the realisable case is stage 1's (the same set of exact fits), so one pass over φ builds the only
system solved, from its normal equations (BLAS, two refinement steps). Everything else (small,
rank-deficient, near-deterministic pi_t) takes the two stages above.

Leading axes (a stack of problems and policies) are carried through; each member is the
unstacked computation bit for bit (one SVD per member).
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-12
FIT_RTOL = 1e-10


FAST_WORK = 2 ** 20
"""Systems with rows·d² of at least this many entries (and more rows than 4·d) take the normal-equations
path of :func:`min_norm_solve` when they are well conditioned; smaller ones always take the SVD."""
GRAM_RCOND = 1e-8
"""The normal-equations path is taken when the Gram matrix's smallest eigenvalue is above this fraction of
its largest (condition number of the rows below 1e4)."""


def min_norm_solve(M: np.ndarray, t: np.ndarray) -> np.ndarray:
    """M⁺t for M [..., R, d], t [..., R] (rescaled by the largest |M|; singular values below RTOL
    of the largest dropped).

    A large, well-conditioned system (``R·d² >= FAST_WORK``, Gram eigenvalues within 1/``GRAM_RCOND``)
    is solved from its normal equations by BLAS (MᵀM, one d x d eigen-decomposition) with two steps
    of iterative refinement on the residual t - M·z, which bring the solution to the SVD's accuracy
    (each step contracts the error by about eps·cond(MᵀM) <= 1e-8; tests/test_near_determinism.py
    checks it against the SVD to 1e-12). There every singular value is kept by the SVD's cut-off too,
    so both give the unique least-squares solution. Anything else (small, rank-deficient or badly
    conditioned: near-deterministic pi_t) takes the SVD of M itself, never squared.
    """
    s = np.max(np.abs(M), axis=(-2, -1), keepdims=True)
    s = np.where(s > 0, s, 1.0)
    A, b = M / s, t / s[..., 0]
    R, d = A.shape[-2:]
    if R * d * d < FAST_WORK or R < 4 * d:
        return _svd_solve(A, b)
    z, well = _gram_refine([(A, b)])
    if not np.any(well):
        return _svd_solve(A, b)
    if np.all(well):
        return z
    out = z.reshape(-1, d)  # the badly conditioned members of a stack: one SVD each
    flat_A, flat_b = A.reshape(-1, R, d), b.reshape(-1, R)
    for i in np.flatnonzero(~well.ravel()):
        out[i] = _svd_solve(flat_A[i], flat_b[i])
    return out.reshape(z.shape)


def _svd_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(np.linalg.pinv(A, rtol=RTOL), b[..., None])[..., 0]


def _realisable(rho, phi, q):
    """The weight-free stage: min-norm z with z·(φ(x,y) - φ(x,0)) = q(x,y) - q(x,0), and whether it fits."""
    seen = (rho > 0)[..., None]
    D = np.where(seen[..., None], phi[..., 1:, :] - phi[..., :1, :], 0.0)
    a = np.where(seen, q[..., 1:] - q[..., :1], 0.0)
    lead = np.broadcast_shapes(D.shape[:-3], a.shape[:-2])
    D = np.broadcast_to(D, lead + D.shape[-3:]).reshape(lead + (-1, D.shape[-1]))
    a = np.broadcast_to(a, lead + a.shape[-2:]).reshape(lead + (-1,))
    z = min_norm_solve(D, a)
    if a.shape[-1] == 0:  # one response per context: nothing to fit
        return z, np.ones(lead, dtype=bool)
    res = np.max(np.abs(np.matmul(D, z[..., None])[..., 0] - a), axis=-1)
    return z, res <= FIT_RTOL * np.max(np.abs(a), axis=-1)


def _centred_rows(rho, phi, q, p):
    """sqrt(rho·p)-weighted rows φ - E_p φ and targets q - E_p q, flattened over (x, y)."""
    m = np.einsum("...xy,...xyd->...xd", p, phi)
    e = np.sum(p * q, axis=-1)
    w = np.sqrt(rho[..., None] * p)
    rows = phi - m[..., None, :]
    rows *= w[..., None]  # in place: the same products as w·(φ - m), one X·Y·d array
    targets = w * (q - e[..., None])
    return rows.reshape(rows.shape[:-3] + (-1, rows.shape[-1])), targets.reshape(targets.shape[:-2] + (-1,)), m, e


def _weighted_blocks(rho, phi, q, pi, mu):
    """The weighted system as blocks of rows and targets (stacked, they are the rows of stage 2)."""
    rows, targets, m1, e1 = _centred_rows(rho, phi, q, pi)
    blocks = [(rows, targets)]
    if mu is not None and mu is not pi:
        r2, t2, m2, e2 = _centred_rows(rho, phi, q, mu)
        w = np.sqrt(rho)[..., None]
        blocks += [(r2, t2), (w * (m1 - m2), w[..., 0] * (e1 - e2))]
    return blocks


def _normal_equations(blocks):
    """The least-squares solution of the stacked blocks (M_k, t_k) from the normal equations sum_k M_kᵀM_k
    (BLAS, no concatenated copy; the rows rescaled in place by the largest |M| of each member) with two
    steps of iterative refinement, as :func:`min_norm_solve`'s fast path; and whether each member is well
    conditioned (only those members' solutions are used)."""
    s = np.max([np.max(np.abs(M), axis=(-2, -1), keepdims=True) for M, _ in blocks], axis=0)
    s = np.where(s > 0, s, 1.0)
    for M, t in blocks:  # the blocks are this module's own arrays: rescaled in place
        M /= s
        t /= s[..., 0]
    return _gram_refine(blocks)


def _gram_refine(blocks):
    """(z, well): the solution of the stacked (already rescaled) blocks from the normal equations sum_k M_kᵀM_k
    — one eigen-decomposition, eigenvalues below ``GRAM_RCOND`` of the largest marking a member not well
    conditioned — and two steps of iterative refinement on the residuals (min_norm_solve's fast path: one block)."""
    gram = sum(np.matmul(np.swapaxes(M, -1, -2), M) for M, _ in blocks)
    w, V = np.linalg.eigh(gram)
    well = w[..., 0] > GRAM_RCOND * w[..., -1]
    inv = np.divide(1.0, w, out=np.zeros_like(w), where=well[..., None])

    def solve(rhs):
        return np.matmul(V, (inv * np.matmul(np.swapaxes(V, -1, -2), rhs[..., None])[..., 0])[..., None])[..., 0]

    def back(residuals):  # sum_k M_kᵀ r_k
        return sum(np.matmul(np.swapaxes(M, -1, -2), r[..., None])[..., 0] for (M, _), r in zip(blocks, residuals))

    z = solve(back([t for _, t in blocks]))
    for _ in range(2):
        z = z + solve(back([t - np.matmul(M, z[..., None])[..., 0] for M, t in blocks]))
    return z, well


def natural_step(rho, phi, q, pi, mu=None, eta: float = 1.0) -> np.ndarray:
    """delta of exact NPG (``mu`` None: F⁺∇J) or of exact REBEL's population regression (y' ~ mu,
    A⁺b), times eta. ``mu is pi`` is NPG's system (A = 2F, b = 2∇J: the same solution).

    A large system whose weighted Gram matrix is well conditioned (every member) is solved once, from
    the weighted rows' normal equations: its solution is then unique, so in the realisable case it is
    the weight-free stage's solution too (the same set of exact fits, one element), and one pass over φ
    serves both stages. Anything else (small, rank-deficient or badly conditioned: near-deterministic
    pi_t) takes the two stages above, by the SVD."""
    X, Y, d = phi.shape[-3:]
    rebel = mu is not None and mu is not pi
    R = X * Y * (2 if rebel else 1) + (X if rebel else 0)
    if R * d * d >= FAST_WORK and R >= 4 * d:
        fast, well = _normal_equations(_weighted_blocks(rho, phi, q, pi, mu))
        if np.all(well):
            return eta * fast
        if np.any(well):  # a stack with badly conditioned members: those take the two stages, the rest this
            return np.where(well[..., None], eta * fast, _two_stages(rho, phi, q, pi, mu, eta))
    return _two_stages(rho, phi, q, pi, mu, eta)


def _two_stages(rho, phi, q, pi, mu, eta):
    z, fits = _realisable(rho, phi, q)
    if np.all(fits):
        return eta * z
    blocks = _weighted_blocks(rho, phi, q, pi, mu)
    rows = np.concatenate([M for M, _ in blocks], axis=-2)
    targets = np.concatenate([t for _, t in blocks], axis=-1)
    weighted = min_norm_solve(rows, targets)
    return eta * np.where(fits[..., None], z, weighted)
