"""Policies with exact distributions: tabular softmax and log-linear.

Both expose the full table of log-probabilities (for exact metrics and updates), vectorised
sampling, and differentiable torch log-probabilities of (context, response) pairs (for the
loss-based solvers that any differentiable policy can use).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import log_softmax

from testbed.errors import InputError
from testbed.problems import LinearBandit, TabularBandit


class Policy:
    """Base class: subclasses define ``torch_log_probs(params, x)`` and ``log_probs()``."""

    params: np.ndarray

    def log_probs(self) -> np.ndarray:
        """ln pi(y|x) for every context and response, shape [X, Y]."""
        raise NotImplementedError

    def log_probs_at(self, x: np.ndarray) -> np.ndarray:
        """ln pi(.|x_i) for each context in ``x``, shape [N, Y]."""
        return self.log_probs()[x]

    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs())

    def sample(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """One response per context in ``x`` (inverse-CDF, one uniform draw each)."""
        return sample_rows(rng, np.exp(self.log_probs_at(x)))

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        """ln pi_params(.|x_i) as a differentiable function of ``params``, shape [N, Y]."""
        raise NotImplementedError

    def torch_log_prob(self, params: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        """ln pi_params(y_i|x_i), shape [N]."""
        return self.torch_log_probs(params, x).gather(1, torch.as_tensor(y)[:, None])[:, 0]

    def with_params(self, params: np.ndarray) -> Policy:
        raise NotImplementedError


def sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One index per row of ``probs`` [N, Y] by inverse CDF (rows need not be normalised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), probs.shape[1] - 1)


class TabularSoftmax(Policy):
    """pi(y|x) = softmax(theta[x, :])_y with one logit per (x, y); params shape [X, Y]."""

    def __init__(self, logits: np.ndarray):
        self.params = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)

    def log_probs(self) -> np.ndarray:
        return self.params  # kept normalised by construction

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        return torch.log_softmax(params[torch.as_tensor(x)], dim=-1)

    def with_params(self, params: np.ndarray) -> TabularSoftmax:
        return TabularSoftmax(params)


class _FeaturePolicy(Policy):
    """A policy whose logits are a function of fixed features phi[x, y, :] (cached as a tensor)."""

    def __init__(self, features: np.ndarray):
        self.features = np.asarray(features, dtype=np.float64)
        self._tf: torch.Tensor | None = None

    def _torch_features(self) -> torch.Tensor:
        if self._tf is None:
            self._tf = torch.as_tensor(self.features)
        return self._tf

    def _copy_with(self, new: _FeaturePolicy) -> _FeaturePolicy:
        new._tf = self._tf
        return new


class LogLinear(_FeaturePolicy):
    """pi_theta(y|x) ∝ exp(theta·phi(x, y)); params theta shape [d], features phi [X, Y, d]."""

    def __init__(self, features: np.ndarray, theta: np.ndarray | None = None):
        super().__init__(features)
        self.params = np.zeros(self.features.shape[2]) if theta is None else np.asarray(theta, dtype=np.float64)

    def log_probs(self) -> np.ndarray:
        return log_softmax(self.features @ self.params, axis=1)

    def log_probs_at(self, x: np.ndarray) -> np.ndarray:
        return log_softmax(self.features[x] @ self.params, axis=1)

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        return torch.log_softmax(self._torch_features()[torch.as_tensor(x)] @ params, dim=-1)

    def with_params(self, params: np.ndarray) -> LogLinear:
        return self._copy_with(LogLinear(self.features, params))


class MLPPolicy(_FeaturePolicy):
    """pi(y|x) ∝ exp(f_theta(phi(x, y))), f a tanh MLP with a scalar output shared across responses.

    Params are one flat vector (weights and biases of each layer in order). The last layer starts
    at zero, so pi_0 is uniform; other layers use PyTorch's default U(±1/sqrt(fan_in)) init drawn
    from the given numpy Generator (so the run seed fixes it).
    """

    def __init__(self, features: np.ndarray, hidden: tuple[int, ...] = (32,), params: np.ndarray | None = None,
                 rng: np.random.Generator | None = None):
        super().__init__(features)
        self.hidden = tuple(int(h) for h in hidden)
        sizes = (self.features.shape[2], *self.hidden, 1)
        self.shapes = [((o, i), (o,)) for i, o in zip(sizes[:-1], sizes[1:])]
        if params is None:
            rng = rng or np.random.default_rng(0)
            parts = []
            for k, ((o, i), _) in enumerate(self.shapes):
                bound = 0.0 if k == len(self.shapes) - 1 else 1 / np.sqrt(i)
                parts += [rng.uniform(-bound, bound, size=o * i), rng.uniform(-bound, bound, size=o)]
            params = np.concatenate(parts)
        self.params = np.asarray(params, dtype=np.float64)
        expected = sum(o * i + o for (o, i), _ in self.shapes)
        if self.params.shape != (expected,):
            raise ValueError(f"MLP params must have shape ({expected},) (got {self.params.shape})")

    def _logits(self, params: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        h, k = feats, 0
        for j, ((o, i), _) in enumerate(self.shapes):
            w = params[k:k + o * i].reshape(o, i)
            b = params[k + o * i:k + o * i + o]
            k += o * i + o
            h = h @ w.T + b
            if j < len(self.shapes) - 1:
                h = torch.tanh(h)
        return h[..., 0]

    def log_probs(self) -> np.ndarray:
        with torch.no_grad():
            return torch.log_softmax(self._logits(torch.as_tensor(self.params), self._torch_features()), -1).numpy()

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        return torch.log_softmax(self._logits(params, self._torch_features()[torch.as_tensor(x)]), dim=-1)

    def with_params(self, params: np.ndarray) -> MLPPolicy:
        return self._copy_with(MLPPolicy(self.features, self.hidden, params))


POLICIES = ("tabular", "loglinear", "mlp")


def mlp_features(problem: TabularBandit) -> np.ndarray:
    """Features of (x, y) for the MLP: phi(x, y) on a linear problem, [one-hot x, one-hot y] otherwise."""
    if isinstance(problem, LinearBandit):
        return problem.features
    X, Y = problem.num_contexts, problem.num_actions
    return np.concatenate([np.broadcast_to(np.eye(X)[:, None, :], (X, Y, X)),
                           np.broadcast_to(np.eye(Y)[None, :, :], (X, Y, Y))], axis=2)


def default_kind(problem: TabularBandit) -> str:
    return "loglinear" if isinstance(problem, LinearBandit) else "tabular"


def initial_policy(problem: TabularBandit, kind: str | None = None, rng: np.random.Generator | None = None,
                   hidden: tuple[int, ...] = (32,)) -> Policy:
    """pi_0: tabular starts at pi_ref; log-linear at theta = 0 and the MLP with a zero last layer (uniform)."""
    kind = kind or default_kind(problem)
    if kind == "tabular":
        return TabularSoftmax(problem.log_pi_ref)
    if kind == "loglinear":
        if not isinstance(problem, LinearBandit):
            raise InputError(f"policy 'loglinear' needs a linear problem with features (problem {problem.name!r} has none)")
        return LogLinear(problem.features)
    if kind == "mlp":
        return MLPPolicy(mlp_features(problem), hidden, rng=rng)
    raise InputError(f"policy must be one of {', '.join(POLICIES)} (got {kind!r})")


# ----- least-squares steps shared by the sampled solvers ---------------------------------------
def _block_lstsq(num_blocks: int, blocks: np.ndarray, rows: np.ndarray, targets: np.ndarray,
                 ridge: float = 0.0) -> np.ndarray:
    """Minimum-norm least squares with block-diagonal design.

    Row i lives in block ``blocks[i]``; solves min_delta sum_i (rows[i]·delta[blocks[i]] - targets[i])²
    block by block, delta_b = pinv(G_bᵀG_b)·G_bᵀt_b (= G_b⁺ t_b), batched over blocks. Eigenvalues
    below 1e-9 x the largest of *all* blocks count as zero, so a block whose rows are rounding noise
    (e.g. demeaned rows of a context where one response was always drawn) gets no step; a block
    with no rows gets delta = 0. With ``ridge`` = lam > 0 it solves (GᵀG + lam·s·I)·delta = Gᵀt,
    s = tr(GᵀG)/(blocks·Y) the mean eigenvalue, so lam is relative to the problem's scale.
    """
    Y = rows.shape[1]
    gram = np.zeros((num_blocks, Y, Y))
    np.add.at(gram, blocks, rows[:, :, None] * rows[:, None, :])
    rhs = np.zeros((num_blocks, Y))
    np.add.at(rhs, blocks, rows * targets[:, None])
    if ridge > 0:
        scale = np.trace(gram, axis1=1, axis2=2).sum() / (num_blocks * Y)
        if scale <= 0:  # every row is zero: no information, no step
            return np.zeros((num_blocks, Y))
        return np.linalg.solve(gram + ridge * scale * np.eye(Y), rhs[..., None])[..., 0]
    w, v = np.linalg.eigh(gram)
    keep = w > 1e-9 * max(w.max(), 0.0)
    inv = np.divide(1.0, w, out=np.zeros_like(w), where=keep)
    return np.einsum("bij,bj->bi", v, inv * np.einsum("bji,bj->bi", v, rhs))


def _demean_by_context(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Subtract from each row the mean of the rows that share its context."""
    n = np.bincount(x)
    sums = np.zeros((len(n),) + a.shape[1:])
    np.add.at(sums, x, a)
    return a - (sums / np.maximum(n, 1).reshape((-1,) + (1,) * (a.ndim - 1)))[x]


def lstsq_step(policy: Policy, x: np.ndarray, rows: np.ndarray, targets: np.ndarray,
               context_intercept: bool = False, ridge: float = 0.0) -> tuple[Policy, np.ndarray]:
    """theta + delta, delta the min-norm solution of min sum_i (rows_i·delta [+ b_{x_i}] - targets_i)².

    ``rows`` are directions in score-feature space: for a tabular policy [N, Y] vectors inside the
    block of context x_i; for a log-linear policy [N, d] feature vectors. With
    ``context_intercept`` a free offset b_x per context is fitted too (by Frisch–Waugh: rows and
    targets demeaned within each context), i.e. a per-context baseline. ``ridge`` = lam > 0 damps
    the normal equations relative to their mean eigenvalue s: (GᵀG + lam·s·I)·delta = Gᵀt. Returns
    the new policy and the fitted values rows_i·delta (+ b_{x_i}).
    """
    if context_intercept:
        offset = targets - _demean_by_context(x, targets)
        rows, targets = _demean_by_context(x, rows), targets - offset
        new, fitted = lstsq_step(policy, x, rows, targets, ridge=ridge)
        return new, fitted + offset
    if isinstance(policy, TabularSoftmax):
        delta = _block_lstsq(policy.params.shape[0], x, rows, targets, ridge)
        return policy.with_params(policy.params + delta), np.einsum("ny,ny->n", rows, delta[x])
    if isinstance(policy, LogLinear):
        if ridge > 0:
            gram = rows.T @ rows
            scale = np.trace(gram) / len(gram)
            delta = (np.linalg.solve(gram + ridge * scale * np.eye(len(gram)), rows.T @ targets) if scale > 0
                     else np.zeros(len(gram)))  # every row is zero: no information, no step
        else:
            delta = np.linalg.lstsq(rows, targets, rcond=None)[0]
        return policy.with_params(policy.params + delta), rows @ delta
    raise TypeError(f"least-squares steps need a tabular or log-linear policy (got {type(policy).__name__})")


def score_features(policy: Policy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """psi(x, y) with ln pi_theta(y|x) = theta·psi(x, y) - ln Z_theta(x): e_y in block x, or phi(x, y)."""
    if isinstance(policy, TabularSoftmax):
        return np.eye(policy.params.shape[1])[y]
    if isinstance(policy, LogLinear):
        return policy.features[x, y]
    raise TypeError(f"score features need a tabular or log-linear policy (got {type(policy).__name__})")


def mean_score_features(policy: Policy, x: np.ndarray) -> np.ndarray:
    """E_{y~pi(.|x)} psi(x, y), so that grad ln pi(y|x) = psi(x, y) - this."""
    p = np.exp(policy.log_probs_at(x))
    if isinstance(policy, TabularSoftmax):
        return p
    if isinstance(policy, LogLinear):
        return np.einsum("ny,nyd->nd", p, policy.features[x])
    raise TypeError(f"score features need a tabular or log-linear policy (got {type(policy).__name__})")
