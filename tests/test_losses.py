"""Losses: closed forms, and the official form's minimiser equals the paper form's."""

import numpy as np
import pytest
import torch

from testbed.losses import dpo_loss, ipo_loss, kl_shaped_reward, ppo_clip_loss, rebel_loss, rebel_loss_official, value_loss


def batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(4)]


def test_rebel_loss_hand_computed():
    lr, lr2, r, r2 = (torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64),
                      torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.5], dtype=torch.float64))
    # ((0.4)/2 - 1)² = 0.64 ; ((-1.3)/2 + 0.5)² = 0.0225 ; mean = 0.33125
    assert rebel_loss(lr, lr2, r, r2, eta=2.0).item() == pytest.approx(0.33125)
    assert rebel_loss_official(lr, lr2, r, r2, eta=2.0).item() == pytest.approx(4 * 0.33125)


@pytest.mark.parametrize("eta", [0.01, 1.0, 50.0])
def test_official_form_is_eta_squared_times_paper_form(eta):
    a = batch()
    assert rebel_loss_official(*a, eta).item() == pytest.approx(eta**2 * rebel_loss(*a, eta).item(), rel=1e-12)


@pytest.mark.parametrize("eta", [0.1, 1.0, 10.0])
def test_same_minimiser(eta):
    """Minimise both forms over a log-linear model's theta (LBFGS from the same start): the
    minimisers agree with each other and with the closed-form least-squares solution."""
    rng = np.random.default_rng(1)
    N, d = 64, 3
    dphi = torch.tensor(rng.normal(size=(N, d)))
    dr = torch.tensor(rng.normal(size=N))
    zero = torch.zeros(N, dtype=torch.float64)

    def minimise(loss_fn):
        th = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([th], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn(dphi @ th, zero, dr, zero, eta)
            loss.backward()
            return loss
        opt.step(closure)
        return th.detach().numpy()

    a, b = minimise(rebel_loss), minimise(rebel_loss_official)
    closed = eta * np.linalg.lstsq(dphi.numpy(), dr.numpy(), rcond=None)[0]
    np.testing.assert_allclose(a, closed, atol=1e-7)
    np.testing.assert_allclose(b, closed, atol=1e-7)


def test_shape_and_argument_checks():
    a = batch()
    with pytest.raises(ValueError, match="shape"):
        rebel_loss(a[0], a[1][:3], a[2], a[3], 1.0)
    with pytest.raises(ValueError, match="shape"):
        rebel_loss(a[0][0], a[1][0], a[2][0], a[3][0], 1.0)  # 0-d: no sample axis
    with pytest.raises(ValueError, match="eta"):
        rebel_loss(*a, eta=0.0)
    with pytest.raises(ValueError, match="beta"):
        kl_shaped_reward(a[0], a[1], a[2], beta=-1.0)


def test_stacked_losses_are_each_rows_loss_exactly():
    """[S, N] inputs (S seeds stacked) give S losses, each bit-for-bit the loss of that row alone, for
    row lengths that are and are not multiples of the SIMD width."""
    g = torch.Generator().manual_seed(3)
    for n in (5, 8, 37):
        t = [torch.randn(4, n, generator=g, dtype=torch.float64) * 3 for _ in range(4)]
        for fn, args in ((rebel_loss, (*t, 0.7)), (ppo_clip_loss, (t[0] * 0.2, t[1], 0.2)),
                         (value_loss, (t[0], t[1], t[2], 0.3)), (dpo_loss, (t[0], t[1], 2.0)), (ipo_loss, (t[0], t[1], 0.5))):
            stacked = fn(*args)
            assert stacked.shape == (4,)
            for s in range(4):
                row = fn(*(a[s].clone() if isinstance(a, torch.Tensor) else a for a in args))
                assert torch.equal(stacked[s], row), (fn.__name__, n, s)


def test_kl_shaped_reward_numpy_and_torch():
    r, lp, lref = np.array([1.0, 2.0]), np.log([0.5, 0.25]), np.log([0.25, 0.25])
    np.testing.assert_allclose(kl_shaped_reward(r, lp, lref, 0.1), [1.0 - 0.1 * np.log(2), 2.0])
    t = kl_shaped_reward(torch.tensor(r), torch.tensor(lp), torch.tensor(lref), 0.1)
    np.testing.assert_allclose(t.numpy(), [1.0 - 0.1 * np.log(2), 2.0])
