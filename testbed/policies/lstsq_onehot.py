"""Sampled least squares with one-hot (tabular) score features, from per-context counts.

With a tabular policy the score ∇ln pi(y|x) is e_y - pi(.|x) in block x, so the sampled least-squares
problems decouple per context and depend on the samples only through counts:

- **Sampled NPG** (a free intercept per context, :func:`npg_step`): the rows demeaned within context x
  are e_y - ĉ/n (ĉ the counts of the n samples of x), whatever pi is, so the normal equations are
  (diag(c) - ccᵀ/n)·delta = s - c·t̄ (s_y the sum of the targets of the samples with response y, t̄
  their mean over the context). Their minimum-norm solution is closed form: with m_y = s_y/c_y the
  mean target of response y and A = {y : c_y > 0} the responses sampled,

      delta_y = m_y - mean_{y' ∈ A} m_y'   (y ∈ A),   delta_y = 0   (y ∉ A).

  (The null space of diag(c) - ccᵀ/n is spanned by 1_A and the e_y, y ∉ A; m - t̄ solves the system,
  and subtracting its mean over A makes it orthogonal to that null space.) Its non-zero eigenvalues
  are >= min_{y ∈ A} c_y >= 1 (interlacing) and <= n, so the general solver's cut-off (1e-9 of the
  largest) drops none of them: the closed form is the pseudo-inverse solution exactly, and a context
  where one response was always drawn gets exactly no step (the general solver, given the rows
  e_y - pi minus their floating-point mean, saw rounding noise there and could invert it). With damping
  lam > 0, (diag(c) - ccᵀ/n + mu·I)·delta = s - c·t̄, mu = lam·tr/(X·Y) (tr summed over the contexts
  of one problem), by Sherman–Morrison on the diagonal diag(c) + mu·I.
- **Sampled REBEL** (rows e_y - e_y', no intercept, :func:`pair_solve`): each context's Gram matrix is
  the Laplacian L of the multigraph with an edge (y, y') per pair and the right-hand side b is ⟂ the
  indicator of every connected component, so L⁺b = (L + P)⁻¹b with P = sum_c 1_c1_cᵀ/|c| (one LU solve
  per context, no eigen-decomposition). Components by the boolean closure of I + adjacency (ceil(log2 Y)
  squarings, batched over all contexts; faster at Y = 10 than label propagation or scipy's
  connected_components on the block-diagonal graph, measured).

- **Population pair regression with product weights** (:func:`product_pair_regression`, REBEL on
  preferences, exact): min_f sum_{y,y'} a_y·b_y'·(f_y - f_y' - t_yy')² has the Laplacian
  diag(a·Σb + b·Σa) - abᵀ - baᵀ, a diagonal plus rank two, so it is solved in closed form per context
  (no eigen-decomposition, no cut-off: exact however small the weights; testbed/THEORY.md §E).

Counts come from ``np.bincount`` (integers; sums of targets accumulated per bin in sample order), so
member s of a stack gets bit for bit its unstacked result, and no N x Y or N x Y² array is built.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from testbed.problems.exact import components


def context_counts(blocks: np.ndarray, y: np.ndarray, targets: np.ndarray, num_blocks: int, Y: int):
    """Counts c[b, y] of the samples (blocks[i], y[i]) and the sums of their targets, [num_blocks, Y] each."""
    key = blocks * Y + y
    counts = np.bincount(key, minlength=num_blocks * Y).reshape(num_blocks, Y).astype(float)
    sums = np.bincount(key, weights=targets, minlength=num_blocks * Y).reshape(num_blocks, Y)
    return counts, sums


def npg_delta(counts: np.ndarray, sums: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """The minimum-norm (``ridge`` 0) or damped solution of the per-context normal equations of sampled NPG
    (see the module docstring), counts and sums [..., X, Y]; the damping scale is per leading index."""
    n = counts.sum(axis=-1, keepdims=True)
    if ridge == 0:
        seen = counts > 0
        m = np.divide(sums, counts, out=np.zeros_like(sums), where=seen)
        k = seen.sum(axis=-1, keepdims=True)
        mean = np.divide(m.sum(axis=-1, keepdims=True), k, out=np.zeros_like(n), where=k > 0)
        return np.where(seen, m - mean, 0.0)
    c2 = np.divide(np.sum(counts * counts, axis=-1, keepdims=True), n, out=np.zeros_like(n), where=n > 0)
    trace = np.sum(n - c2, axis=(-2, -1), keepdims=True)
    scale = trace / (counts.shape[-2] * counts.shape[-1])
    mu = ridge * np.where(scale > 0, scale, 1.0)
    tbar = np.divide(sums.sum(axis=-1, keepdims=True), n, out=np.zeros_like(n), where=n > 0)
    r = sums - counts * tbar
    a, g = r / (counts + mu), counts / (counts + mu)
    denom = n - np.sum(counts * g, axis=-1, keepdims=True)  # = sum_y c_y·mu/(c_y + mu) > 0 where n > 0
    coef = np.divide(np.sum(counts * a, axis=-1, keepdims=True), denom, out=np.zeros_like(n), where=n > 0)
    return np.where(scale > 0, a + g * coef, 0.0)  # a problem with no information: no step


def npg_step(policy, x: np.ndarray, y: np.ndarray, targets: np.ndarray, ridge: float = 0.0):
    """Sampled NPG's step of a tabular policy (one, x [N], or a stack, x [S, N]): the least-squares fit of
    ``targets`` on the scores with a free intercept per context, in closed form from counts."""
    X, Y = policy.params.shape[-2:]
    lead = x.shape[:-1]
    S = int(np.prod(lead))
    flat = (np.arange(S)[:, None] * X + x.reshape(S, -1)).ravel()
    counts, sums = context_counts(flat, y.ravel(), targets.ravel(), S * X, Y)
    delta = npg_delta(counts.reshape(lead + (X, Y)), sums.reshape(lead + (X, Y)), ridge)
    return policy.with_params(policy.params + delta)


def pair_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """L⁺b for the Laplacians ``gram`` [B, Y, Y] of pair rows and right-hand sides ``rhs`` [B, Y] ⟂ their null
    spaces: (L + P)⁻¹b, P the projector onto the component indicators (see the module docstring). The
    eigen-solver's cut-off (1e-9 of the largest eigenvalue) would drop only rounding-level eigenvalues here:
    a connected Laplacian's smallest non-zero eigenvalue is >= 4/k² for k <= Y responses, its largest <=
    2·pairs."""
    reach = components(gram)
    proj = reach / reach.sum(axis=2)[:, :, None]  # 1_c1_cᵀ/|c|: the component of y, divided by its size
    return np.linalg.solve(gram + proj, rhs[..., None])[..., 0]


def product_pair_regression(log_a: np.ndarray, log_b: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The minimiser f [..., Y] of sum_{y,y'} a_y·b_y'·(f_y − f_y' − t_yy')² per row, the weights given by their
    logarithms (ln a, ln b [..., Y], −inf for 0; t [..., Y, Y]), centred to mean 0 over the responses with
    a_y + b_y > 0 (the minimum-norm solution; 0 on the others and on rows without weight).

    With sa = Σa, sb = Σb the normal equations are (Δ − abᵀ − baᵀ)f = β, Δ = diag(δ), δ = a·sb + b·sa, and
    β = a∘(t·b) − b∘(tᵀ·a). Writing f = Δ⁻¹(β + a·(bᵀf) + b·(aᵀf)) and solving for the two scalars gives, up to a
    constant,

        f = p∘(t·b) − q∘(tᵀ·a) + q·Σ_z p_z·β_z / (1 − Σ_z a_z·q_z),      p = a/δ, q = b/δ,

    where Σ a∘q = Σ_y uv/(u + v) (u = a/sa, v = b/sb) is half a sum of harmonic means, <= ½: the denominator is
    >= ½. p and q are logistic functions of ln(a·sb) − ln(b·sa), a ratio of one response's own weights, so f is
    exact to rounding however small the weights — near-deterministic policies, probabilities that underflow to
    0 while their logarithms are finite — where a pseudo-inverse with a relative cut-off drops the rare
    responses' directions. Elementwise and last-axis sums only: row i of a stack gets bit for bit its
    unstacked result."""
    a, b = np.exp(log_a), np.exp(log_b)
    sa, sb = np.sum(a, axis=-1, keepdims=True), np.sum(b, axis=-1, keepdims=True)
    has = ((log_a > -np.inf) | (log_b > -np.inf)) & (sa > 0) & (sb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(has, (log_a + np.log(sb)) - (log_b + np.log(sa)), 0.0)  # ln(a·sb / (b·sa))
        p = np.where(has, expit(z) / sb, 0.0)
        q = np.where(has, expit(-z) / sa, 0.0)
    tb = np.einsum("...ab,...b->...a", target, b)
    ta = np.einsum("...ab,...a->...b", target, a)
    kappa = np.sum(p * (a * tb - b * ta), axis=-1, keepdims=True) / (1.0 - np.sum(a * q, axis=-1, keepdims=True))
    f = np.where(has, p * tb - q * ta + q * kappa, 0.0)
    n = np.sum(has, axis=-1, keepdims=True)
    mean = np.divide(np.sum(f, axis=-1, keepdims=True), n, out=np.zeros_like(sa), where=n > 0)
    return np.where(has, f - mean, 0.0)
