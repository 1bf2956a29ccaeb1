"""The cross-track identity test for the diffusion back-end: with one denoising step and tabular conditioning,
REBEL's update on the diffusion policy equals the bandit REBEL update on the same pairs.

The denoiser is :class:`~testbed.diffusion.models.TableDenoiser`, eps(x, t, c) = theta[c]. One DDIM step
from x_T gives x_0 ~ N(a·x_T + b·theta[c], sigma² I), with a, b, sigma from the scheduler's alpha_bar in closed
form (computed here, not by the back-end). On the bandit side the same law is a policy over the drawn responses
(response j = the pair (x_T, x_0) of draw j): a contextual bandit with Gaussian log-probabilities, updated by
the bandit REBEL's own sampled path (pairs, KL shaping, :func:`~testbed.algorithms.base.adam_fit` with its
shuffles). The diffusion side runs :meth:`REBEL.lm_update` on :class:`~testbed.diffusion.backend.DiffusionBackend`
(AdamW through accelerate, the policy's step log-probabilities, the frozen reference copy). Both get the same
draws and the same shuffling generator; the new tables must agree to 1e-8.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

from testbed.algorithms import ALGORITHMS, build_config  # noqa: E402
from testbed.diffusion.backend import DiffusionBackend  # noqa: E402
from testbed.diffusion.models import TableDenoiser  # noqa: E402
from testbed.diffusion.policy import DiffusionPolicy  # noqa: E402
from testbed.diffusion.sampler import Sampler, make_scheduler  # noqa: E402
from testbed.diffusion.spec import DiffusionTrainConfig  # noqa: E402
from testbed.diffusion.train import make_backend  # noqa: E402

X, SHAPE, B, SEED, LR = 3, (1, 2, 2), 8, 11, 0.05
D = 4
PARAMS = {"eta": 2.0, "beta": 0.05, "mode": "sampled", "solver": "adam", "form": "official", "epochs": 2, "minibatch": 4}


def sampler():
    return Sampler(make_scheduler("ddim", 10), 1, 1.0)


def closed_form():
    """a, b, sigma of the one DDIM step x_0 = a·x_T + b·eps + sigma·z (Song et al. 2021, eq. 12)."""
    s = sampler().scheduler
    t = 1
    ab = float(s.alphas_cumprod[t])
    ap = float(s.final_alpha_cumprod)
    var = (1 - ap) / (1 - ab) * (1 - ab / ap)
    sig = math.sqrt(var)
    return math.sqrt(ap / ab), math.sqrt(1 - ap - var) - math.sqrt(ap) * math.sqrt(1 - ab) / math.sqrt(ab), sig


def initial_table():
    return torch.randn(X, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.5


def draws():
    """Contexts and 2B drawn trajectories (x_T, x_0) from pi_0: first B are y, the next B are y'."""
    a, b, sig = closed_form()
    g = torch.Generator().manual_seed(7)
    x = torch.randint(X, (B,), generator=g)
    xs = torch.cat([x, x])
    xT = torch.randn(2 * B, D, generator=g, dtype=torch.float64)
    x0 = a * xT + b * initial_table()[xs] + sig * torch.randn(2 * B, D, generator=g, dtype=torch.float64)
    return x.numpy(), xT, x0


def reward(x0):
    return torch.tanh(x0).sum(-1) + 0.3 * x0[..., 0]


class GaussianTable:
    """The bandit-side policy: response j is draw j; ln pi(j | c) = ln N(x0_j; a·xT_j + b·theta[c], sigma² I)."""

    def __init__(self, params, xT, x0, picks):
        self.params, self.xT, self.x0, self.picks = params, xT, x0, picks

    def with_params(self, p):
        return GaussianTable(p, self.xT, self.x0, self.picks)

    def torch_log_prob(self, theta, c, j):
        a, b, sig = closed_form()
        c, j = torch.as_tensor(c), torch.as_tensor(j)
        mean = a * self.xT[j] + b * theta[c]
        return (-((self.x0[j] - mean) ** 2).sum(-1) / (2 * sig ** 2) - D * math.log(sig)
                - 0.5 * D * math.log(2 * math.pi))

    def torch_log_prob_of(self, theta, c, *js):  # the Policy interface: each response array at the same contexts
        return tuple(self.torch_log_prob(theta, c, j) for j in js)

    def log_probs(self):
        return self.log_probs_at(np.arange(len(self.params)))

    def log_probs_at(self, c):
        n = len(self.x0)
        th = torch.as_tensor(self.params)
        return np.stack([self.torch_log_prob(th, np.full(n, ci), np.arange(n)).numpy() for ci in c])

    def sample(self, rng, c):
        return self.picks.pop(0)


def bandit_update(monkeypatch):
    x, xT, x0 = draws()
    r = reward(x0).numpy()
    ref = GaussianTable(initial_table().numpy(), xT, x0, [])
    problem = SimpleNamespace(num_contexts=X, num_actions=2 * B, rho=np.full(X, 1 / X), noise_std=0.0,
                              rewards=np.tile(r, (X, 1)), sample_contexts=lambda rng, n: x,
                              sample_rewards=lambda rng, c, j: r[j], log_pi_ref=ref.log_probs_at(np.arange(X)))
    # sampled REBEL draws its uniforms, then y and y' by inverse CDF: plant the contexts and the responses
    import testbed.algorithms.rebel as rebel
    picks = [np.arange(B), np.arange(B, 2 * B)]
    monkeypatch.setattr(rebel.REBEL, "_raw_draws", lambda self, rng, p, n, k: (x,) + (np.zeros(n),) * 4)
    import testbed.algorithms.stacked_draws as stacked_draws  # by row (inverse_cdf) or by table (cdf_draw)
    monkeypatch.setattr(stacked_draws, "inverse_cdf", lambda cdf, u: picks.pop(0))
    monkeypatch.setattr(stacked_draws, "cdf_draw", lambda columns, rows, u: picks.pop(0))
    cfg = build_config(ALGORITHMS["rebel"].Config, {**PARAMS, "pairs": B, "lr": LR}, "rebel", "bandit")
    rng = np.random.default_rng(SEED)
    policy = GaussianTable(initial_table().numpy(), xT, x0, [np.arange(B), np.arange(B, 2 * B)])
    return ALGORITHMS["rebel"](cfg, problem, rng).update(policy, rng).policy.params


def diffusion_update(monkeypatch, epochs=PARAMS["epochs"]):
    x, xT, x0 = draws()
    pol = DiffusionPolicy(TableDenoiser(initial_table()), sampler(), SHAPE, ref="copy")
    tr = DiffusionTrainConfig(iterations=1, batch=B, minibatch=B, lr=LR, adam_eps=1e-8, max_grad_norm=0.0)
    cfg = build_config(ALGORITHMS["rebel"].Config, {**PARAMS, "epochs": epochs}, "rebel", "diffusion")
    ctx, algo = make_backend(pol, lambda images, q: reward(images.reshape(len(images), -1)), tr,
                             np.random.default_rng(SEED), "rebel", cfg)
    traj = torch.cat([xT, x0], 1)  # [2B, (T + 1)·D] with T = 1
    monkeypatch.setattr(DiffusionBackend, "sample", lambda self, q, qm, ref=False: traj)
    q, qm = pol.encode(x.tolist())
    step = algo.diffusion_update(q, qm)
    monkeypatch.undo()
    return pol.model.table.detach().numpy(), step


def test_the_one_step_policy_is_the_closed_form_gaussian():
    a, b, sig = closed_form()
    s = sampler()
    assert s.steps == 1 and s.stochastic(0)
    assert abs(s.std(0) - sig) < 1e-12
    x, eps = torch.randn(2, *SHAPE, dtype=torch.float64), torch.randn(2, *SHAPE, dtype=torch.float64)
    torch.testing.assert_close(s.mean(eps, 0, x), a * x + b * eps, rtol=1e-12, atol=1e-12)


def test_one_step_diffusion_rebel_update_equals_the_bandit_update(monkeypatch):
    before = initial_table().numpy()
    bandit = bandit_update(monkeypatch)
    monkeypatch.undo()
    diff, step = diffusion_update(monkeypatch)
    moved = np.abs(bandit - before).max()
    assert moved > 1e-2, "the update must move the table for the comparison to mean anything"
    err = np.abs(diff - bandit).max()
    assert err < 1e-8, f"diffusion and bandit REBEL updates differ by {err:.2e} (moved {moved:.2e})"
    assert step.samples == 2 * B and step.queries == 2 * B


def test_the_comparison_sees_a_changed_update(monkeypatch):
    bandit = bandit_update(monkeypatch)
    monkeypatch.undo()
    diff, _ = diffusion_update(monkeypatch, epochs=3)
    assert np.abs(diff - bandit).max() > 1e-3
