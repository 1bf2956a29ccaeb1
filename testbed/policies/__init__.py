"""Policies with exact distributions: tabular softmax and log-linear.

Both expose the full table of log-probabilities (for exact metrics and updates), vectorised
sampling, and differentiable torch log-probabilities of (context, response) pairs (for the
loss-based solvers that any differentiable policy can use).

Tabular and log-linear policies may also hold a *stack* of S parameter sets (params [S, X, Y] or
[S, d], features [S, X, Y, d]): one policy per seed, updated together by the batched runner
(:mod:`testbed.experiments.batched`). Every exact operation is written over the last axes, so slice
s of a stacked computation is the same floating-point computation as the unstacked one.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from scipy.special import log_softmax as scipy_log_softmax

from testbed.errors import InputError
from testbed.problems import LinearBandit, TabularBandit

SHORT_AXIS = 64


def log_softmax(z: np.ndarray) -> np.ndarray:
    """ln softmax over the last axis, in float64 (``scipy.special.log_softmax(z, axis=-1)`` to rounding).

    A short last axis (a few responses; many contexts or stacked seeds) is reduced as the leading axis of a
    transposed copy: numpy reduces a contiguous axis of length 10 almost element by element, a leading axis
    in whole-array operations (about 10x faster at 1000 x 10 x 10). The sum runs y = 0, 1, ... in that order
    for every slice, so a stack of seeds gives each member's own result bit for bit.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim < 2 or z.shape[-1] > SHORT_AXIS:
        return scipy_log_softmax(z, axis=-1)
    t = np.moveaxis(z, -1, 0).copy()
    m = t.max(axis=0)
    m[~np.isfinite(m)] = 0.0  # as scipy: a row of -inf stays -inf
    t -= m
    e = np.exp(t)
    total = e[0].copy()
    for row in e[1:]:
        total += row
    with np.errstate(divide="ignore"):
        t -= np.log(total)
    return np.ascontiguousarray(np.moveaxis(t, 0, -1))


class Policy:
    """Base class: subclasses define ``torch_log_probs(params, x)`` and ``log_probs()``."""

    params: np.ndarray

    def log_probs(self) -> np.ndarray:
        """ln pi(y|x) for every context and response, shape [X, Y]."""
        raise NotImplementedError

    def log_probs_at(self, x: np.ndarray) -> np.ndarray:
        """ln pi(.|x_i) for each context in ``x``, shape [N, Y] ([S, N, Y] for a stack, x [S, N])."""
        return take_contexts(self.log_probs(), x)

    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs())

    def sample(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """One response per context in ``x`` (inverse-CDF, one uniform draw each)."""
        return sample_rows(rng, np.exp(self.log_probs_at(x)))

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        """ln pi_params(.|x_i) as a differentiable function of ``params``, shape [N, Y] ([S, N, Y] for
        a stack: params with a leading axis S, x [S, N])."""
        raise NotImplementedError

    def torch_log_prob(self, params: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        """ln pi_params(y_i|x_i), shape [N] ([S, N] for a stack)."""
        return self.torch_log_probs(params, x).gather(-1, torch.as_tensor(y)[..., None])[..., 0]

    def torch_log_prob_of(self, params: torch.Tensor, x: np.ndarray, *ys: np.ndarray) -> tuple[torch.Tensor, ...]:
        """ln pi_params(y_i|x_i) for each index array of ``ys`` at the same contexts ``x``, from one table of
        log-probabilities per minibatch (one log-softmax, not one per sample and response)."""
        lp = self.torch_log_probs(params, x)
        return tuple(lp.gather(-1, torch.as_tensor(y)[..., None])[..., 0] for y in ys)

    def with_params(self, params: np.ndarray) -> Policy:
        raise NotImplementedError


def take_contexts(a, x):
    """a[x] for one policy; for a stack (x [S, N], a [S, X, ...]) the rows a[s, x[s]] of each member.
    numpy arrays or torch tensors."""
    if x.ndim == 1:
        return a[x]
    rows = np.arange(len(x))[:, None]
    if isinstance(a, np.ndarray):  # one flat index into the [S·X, ...] rows: numpy's fast path for a gather
        return np.take(a.reshape((-1,) + a.shape[2:]), rows * a.shape[1] + x, axis=0)
    return a[torch.as_tensor(rows), x]


def member(policy: Policy, s: int) -> Policy:
    """Policy ``s`` of a stacked tabular or log-linear policy, as a view (no renormalisation)."""
    if isinstance(policy, TabularSoftmax):
        view = TabularSoftmax.__new__(TabularSoftmax)
        view.params = policy.params[s]
        return view
    if isinstance(policy, LogLinear):
        return LogLinear(policy.features[s], policy.params[s])
    raise TypeError(f"only tabular and log-linear policies can be stacked (got {type(policy).__name__})")


def stack(policies: list[Policy]) -> Policy:
    """One stacked policy from S tabular or log-linear policies of one shape (see :func:`member`)."""
    first = policies[0]
    if isinstance(first, TabularSoftmax):
        out = TabularSoftmax.__new__(TabularSoftmax)
        out.params = np.stack([p.params for p in policies])
        return out
    if isinstance(first, LogLinear):
        return LogLinear(np.stack([p.features for p in policies]), np.stack([p.params for p in policies]))
    raise TypeError(f"only tabular and log-linear policies can be stacked (got {type(first).__name__})")


def sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One index per row of ``probs`` [N, Y] by inverse CDF (rows need not be normalised)."""
    return inverse_cdf(np.cumsum(probs, axis=-1), rng.random(probs.shape[:-1]))


def inverse_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The index of each row of ``cdf`` = cumsum(probs) [..., Y] that uniform ``u`` [...] selects (for a
    stack of rows drawn member by member: each member's :func:`sample_rows` result, bit for bit)."""
    return np.minimum(count_at_most(cdf, u * cdf[..., -1]), cdf.shape[-1] - 1)


def count_at_most(sorted_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The number of entries of each sorted row [..., K] at most u [...]: a short row (K <= ``SHORT_AXIS``)
    entry by entry over the whole array (numpy sums a short contiguous axis almost element by element)."""
    if sorted_rows.shape[-1] > SHORT_AXIS:
        return np.sum(u[..., None] >= sorted_rows, axis=-1)
    count = np.zeros(np.broadcast_shapes(u.shape, sorted_rows.shape[:-1]), dtype=np.int8)  # (K < 128: less traffic)
    for column in np.moveaxis(sorted_rows, -1, 0):
        count += u >= column
    return count.astype(np.intp)


class TabularSoftmax(Policy):
    """pi(y|x) = softmax(theta[x, :])_y with one logit per (x, y); params shape [X, Y]."""

    def __init__(self, logits: np.ndarray):
        self.params = log_softmax(logits)

    def log_probs(self) -> np.ndarray:
        return self.params  # kept normalised by construction

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        return torch.log_softmax(take_contexts(params, torch.as_tensor(x)), dim=-1)

    def torch_log_prob(self, params: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        return self.torch_log_prob_of(params, x, y)[0]

    def torch_log_prob_of(self, params: torch.Tensor, x: np.ndarray, *ys: np.ndarray) -> tuple[torch.Tensor, ...]:
        """With at least as many rows as contexts: the log-softmax of the whole table [.., X, Y] once, then
        the entries (x_i, y_i) by flat index (fewer exponentials than a row per sample). As params minus
        ``logsumexp``, which is about 2x faster than torch's log_softmax kernel on a stack of short rows (and
        as fast on one table), row by row the same arithmetic at any stack size."""
        X, Y = params.shape[-2:]
        if x.shape[-1] < X:
            return super().torch_log_prob_of(params, x, *ys)
        flat = (params - torch.logsumexp(params, dim=-1, keepdim=True)).reshape(params.shape[:-2] + (X * Y,))
        return tuple(torch.gather(flat, -1, torch.as_tensor(x * Y + y)) for y in ys)

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
        return log_softmax(linear_logits(self.features, self.params))

    def log_probs_at(self, x: np.ndarray) -> np.ndarray:
        return log_softmax(linear_logits(take_contexts(self.features, x), self.params))

    def torch_log_probs(self, params: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        # phi·theta as a product and a sum over d (not a matmul), so a stack is exact per member
        phi = take_contexts(self._torch_features(), torch.as_tensor(x))
        return torch.log_softmax(torch.sum(phi * params[..., None, None, :], dim=-1), dim=-1)

    def with_params(self, params: np.ndarray) -> LogLinear:
        return self._copy_with(LogLinear(self.features, params))


def linear_logits(features: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """phi·theta for features [..., X, Y, d] and theta [..., d] (leading axes: a stack of policies).

    One matrix product per context, [Y, d] @ [d, 1], whether stacked or not, so each slice of a
    stacked call is bit-for-bit the unstacked result."""
    return np.matmul(features, theta[..., None, :, None])[..., 0]


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


PERTURB_ULP = "TESTBED_PERTURB_ULP"
"""Test-only hook: with this environment variable set to k != 0, :func:`initial_policy` moves every
initial parameter by k ulps (see :func:`perturb_ulp`); tests/test_golden_robust.py uses it to show
that the golden check does not hinge on the last bit of a run."""


def perturb_ulp(params: np.ndarray, k: int) -> np.ndarray:
    """params moved by k ulps of max(|p|, 1) each (so zeros move too), with alternating signs along
    the flattened array (+, −, +, …), so a softmax row is not merely shifted by a constant."""
    params = np.asarray(params, dtype=np.float64)
    if k == 0:
        return params
    sign = np.where(np.arange(params.size) % 2 == 0, 1.0, -1.0).reshape(params.shape)
    return params + sign * k * np.spacing(np.maximum(np.abs(params), 1.0))


def _perturbation() -> int:
    value = os.environ.get(PERTURB_ULP, "").strip()
    try:
        return int(value) if value else 0
    except ValueError:
        raise InputError(f"{PERTURB_ULP} must be an integer number of ulps (got {value!r})") from None


def initial_policy(problem: TabularBandit, kind: str | None = None, rng: np.random.Generator | None = None,
                   hidden: tuple[int, ...] = (32,)) -> Policy:
    """pi_0: tabular starts at pi_ref; log-linear at theta = 0 and the MLP with a zero last layer (uniform).
    With ``TESTBED_PERTURB_ULP`` = k set (a test-only hook) every initial parameter moves by k ulps."""
    kind = kind or default_kind(problem)
    k = _perturbation()
    if kind == "tabular":
        return TabularSoftmax(perturb_ulp(problem.log_pi_ref, k))
    if kind == "loglinear":
        if not isinstance(problem, LinearBandit):
            raise InputError(f"policy 'loglinear' needs a linear problem with features (problem {problem.name!r} has none)")
        policy = LogLinear(problem.features)
        return policy.with_params(perturb_ulp(policy.params, k)) if k else policy
    if kind == "mlp":
        policy = MLPPolicy(mlp_features(problem), hidden, rng=rng)
        return policy.with_params(perturb_ulp(policy.params, k)) if k else policy
    raise InputError(f"policy must be one of {', '.join(POLICIES)} (got {kind!r})")


def initial_stack(problems: list[TabularBandit], kind: str | None = None, **kw) -> Policy:
    """pi_0 of S problems of one shape as one stacked policy (tabular or log-linear: they take no random
    numbers); member s is bit for bit :func:`initial_policy` of problem s (a tabular stack is normalised row by
    row, as each member alone)."""
    kind = kind or default_kind(problems[0])
    if kind == "tabular" and not _perturbation():
        return TabularSoftmax(np.stack([p.log_pi_ref for p in problems]))
    return stack([initial_policy(p, kind, **kw) for p in problems])


def score_features(policy: Policy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """psi(x, y) with ln pi_theta(y|x) = theta·psi(x, y) - ln Z_theta(x): e_y in block x, or phi(x, y)."""
    if isinstance(policy, TabularSoftmax):
        return one_hot(y, policy.params.shape[-1])
    if isinstance(policy, LogLinear):
        return policy.features[x, y] if x.ndim == 1 else policy.features[np.arange(len(x))[:, None], x, y]
    raise TypeError(f"score features need a tabular or log-linear policy (got {type(policy).__name__})")


def one_hot(y: np.ndarray, n: int) -> np.ndarray:
    """e_y as rows [..., n] (np.eye(n)[y] without the n x n identity)."""
    out = np.zeros(y.shape + (n,))
    np.put_along_axis(out, np.asarray(y)[..., None], 1.0, axis=-1)
    return out


def mean_score_features(policy: Policy, x: np.ndarray) -> np.ndarray:
    """E_{y~pi(.|x)} psi(x, y), so that grad ln pi(y|x) = psi(x, y) - this."""
    p = np.exp(policy.log_probs_at(x))
    if isinstance(policy, TabularSoftmax):
        return p
    if isinstance(policy, LogLinear):
        return np.einsum("...ny,...nyd->...nd", p, take_contexts(policy.features, x))
    raise TypeError(f"score features need a tabular or log-linear policy (got {type(policy).__name__})")


# the least-squares steps of the sampled solvers (imported last: they need the classes above)
from testbed.policies.lstsq import PairRows, lstsq_step  # noqa: E402, F401
