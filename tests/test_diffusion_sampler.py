"""The diffusion policy's probabilities: one sampler step's log-probability is the Gaussian density of
scipy.stats.multivariate_normal at the step's mean and variance (DDIM with eta > 0 and DDPM, the mean and the
noise scale those of diffusers' own ``step``), a trajectory's is the sum of its steps', and the KL to the
reference is 0 at the reference and the Gaussian KL elsewhere (tiny float64 UNets, 8×8 images)."""

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402

from testbed.diffusion.models import tiny_unet  # noqa: E402
from testbed.diffusion.policy import DiffusionPolicy  # noqa: E402
from testbed.diffusion.sampler import Sampler, make_scheduler, step_kl, step_logprob  # noqa: E402

SHAPE = (1, 8, 8)
D = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these tiny convolutions only pay synchronisation for a second one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(8, widths=(8, 16), classes=3, seed=1, dtype=torch.float64)


def scipy_logpdf(x, mean, std):
    return np.array([multivariate_normal(mean=m.detach().reshape(-1).numpy(), cov=std ** 2 * np.eye(D))
                     .logpdf(v.detach().reshape(-1).numpy()) for v, m in zip(x, mean)])


def state(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g, dtype=torch.float64), torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_logprob_is_the_gaussian_density_of_diffusers_step(unet, eta):
    s = Sampler(make_scheduler("ddim", 100), 4, eta)
    x, noise = state()
    q = torch.tensor([0, 1, 2])
    for i, t in enumerate(s.timesteps):
        eps = unet(x, t, q)
        # diffusers' own DDIM step with this noise is mean + std·noise: the mean and sigma the density uses
        prev = s.scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        mean = s.mean(eps, i, x)
        assert s.std(i) > 0
        torch.testing.assert_close(prev, mean + s.std(i) * noise, rtol=0, atol=1e-12)
        lp = step_logprob(s, eps, i, x, prev).detach().numpy()
        np.testing.assert_allclose(lp, scipy_logpdf(prev, mean.detach(), s.std(i)), rtol=1e-12, atol=1e-12)
        # and it is not a density of anything else: a shifted point has a lower one
        assert np.all(step_logprob(s, eps, i, x, prev + 0.5).detach().numpy() < lp)
        x = prev.detach()


def test_ddpm_step_logprob_is_the_gaussian_density_of_diffusers_step(unet):
    s = Sampler(make_scheduler("ddpm", 100), 4)
    x, _ = state(1)
    q = torch.tensor([2, 0, 1])
    for i, t in enumerate(s.timesteps):
        eps = unet(x, t, q)
        prev = s.scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(5 + i)).prev_sample
        mean = s.mean(eps, i, x)
        if not s.stochastic(i):  # the last step (t' < 0) adds no noise: deterministic, no log-probability
            assert i == s.steps - 1 and s.std(i) == 0
            torch.testing.assert_close(prev, mean, rtol=0, atol=1e-10)
            assert torch.all(step_logprob(s, eps, i, x, prev) == 0)
            continue
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5 + i), dtype=torch.float64)
        torch.testing.assert_close(prev, mean + s.std(i) * z, rtol=0, atol=1e-12)
        lp = step_logprob(s, eps, i, x, prev).detach().numpy()
        np.testing.assert_allclose(lp, scipy_logpdf(prev, mean.detach(), s.std(i)), rtol=1e-12, atol=1e-12)
        x = prev.detach()


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_trajectory_logprob_is_the_sum_of_its_step_densities(unet, kind):
    s = Sampler(make_scheduler(kind, 100), 3, 0.8)
    pol = DiffusionPolicy(unet, s, SHAPE, guidance=2.0, null=3)
    q, qm = pol.encode([0, 2, 1, 1])
    torch.manual_seed(0)
    y = pol.generate(q, qm)
    f = pol.frames(y)
    total = np.zeros(len(y))
    for i, t in enumerate(s.timesteps):
        if s.stochastic(i):
            with torch.no_grad():
                eps = pol.eps(unet, f[:, i], t, q)  # guided: eps_u + w·(eps_c - eps_u)
                u, c = unet(f[:, i], t, torch.full_like(q, 3)), unet(f[:, i], t, q)
                torch.testing.assert_close(eps, u + 2.0 * (c - u))
                total += scipy_logpdf(f[:, i + 1], s.mean(eps, i, f[:, i]), s.std(i))
    lp, mask = pol.logprobs(q, qm, y)
    np.testing.assert_allclose(pol.seq_logprob(q, qm, y).detach().numpy(), total, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lp.sum(1).detach().numpy(), total, rtol=1e-12, atol=1e-12)
    assert mask.sum(1).tolist() == [float(sum(s.stochastic(i) for i in range(3)))] * 4


def test_kl_to_the_reference_is_zero_at_the_reference_and_the_gaussian_kl_elsewhere(unet):
    s = Sampler(make_scheduler("ddim", 100), 3, 1.0)
    pol = DiffusionPolicy(unet, s, SHAPE)
    q, qm = pol.encode([0, 1, 2])
    torch.manual_seed(1)
    y = pol.generate(q, qm)
    assert torch.all(pol.kl_to_reference(q, y) == 0)
    assert torch.all(pol.ref_logprobs(q, qm, y) == pol.logprobs(q, qm, y)[0].detach())
    with torch.no_grad():  # move the policy away from its frozen copy
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    kl = pol.kl_to_reference(q, y)
    assert torch.all(kl > 0)
    # the per-step KL is E_{x'~pi_theta}[ln pi_theta(x') - ln pi_ref(x')]: a Monte Carlo check at one state
    x, i, t = pol.frames(y)[:1, 1], 1, s.timesteps[1]
    with torch.no_grad():
        eps, eps_ref = unet(x, t, q[:1]), pol.ref_model(x, t, q[:1])
        exact = float(step_kl(s, eps, eps_ref, i, x))
        n = 4000
        xs = x.expand(n, *SHAPE)
        draws = s.mean(eps, i, x).expand(n, *SHAPE) + s.std(i) * torch.randn(n, *SHAPE, dtype=torch.float64)
        diff = (step_logprob(s, eps.expand(n, *SHAPE), i, xs, draws)
                - step_logprob(s, eps_ref.expand(n, *SHAPE), i, xs, draws)).numpy()
    se = diff.std() / np.sqrt(n)
    assert exact > 10 * se, "the perturbation must make the KL measurable"
    assert abs(diff.mean() - exact) < 4 * se, (diff.mean(), exact, se)
