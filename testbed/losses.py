"""Loss functions as pure functions of tensors (rlax style): no models, no optimisers, no I/O.

Both the bandit track and the language-model track import these. Every function checks its
arguments' shapes first and fails loudly.
"""

from __future__ import annotations

import torch


def _same_1d(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected 1-d tensors of one shape [N], got {shapes}")


def rebel_loss(logratio: torch.Tensor, logratio_prime: torch.Tensor, reward: torch.Tensor,
               reward_prime: torch.Tensor, eta: float) -> torch.Tensor:
    """REBEL's regression loss, paper form.

    L(theta) = mean_i ( (1/eta)·[ln pi_theta(y_i|x_i)/pi_t(y_i|x_i) - ln pi_theta(y'_i|x_i)/pi_t(y'_i|x_i)]
                        - (r(x_i, y_i) - r(x_i, y'_i)) )²

    Gao et al., "REBEL: Reinforcement Learning via Regressing Relative Rewards", NeurIPS 2024,
    https://arxiv.org/abs/2404.16767, eq. (1) / Algorithm 1.

    Args:
      logratio: ln pi_theta(y|x) - ln pi_t(y|x), shape [N] (pi_t's log-probs computed once, before the update).
      logratio_prime: the same for y', shape [N].
      reward, reward_prime: r(x, y) and r(x, y') (already KL-shaped if regularising), shape [N].
      eta: step size, > 0.
    """
    _same_1d(logratio=logratio, logratio_prime=logratio_prime, reward=reward, reward_prime=reward_prime)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (got {eta})")
    return torch.mean(((logratio - logratio_prime) / eta - (reward - reward_prime)) ** 2)


def rebel_loss_official(logratio: torch.Tensor, logratio_prime: torch.Tensor, reward: torch.Tensor,
                        reward_prime: torch.Tensor, eta: float) -> torch.Tensor:
    """REBEL's loss as the official code writes it: mean((Δ logratio - eta·Δr)²) = eta²·rebel_loss.

    Same minimiser as :func:`rebel_loss` (it is the same function scaled by eta²); the official
    TL;DR script (github.com/ZhaolinGao/REBEL) uses this form. Arguments as for :func:`rebel_loss`.
    """
    _same_1d(logratio=logratio, logratio_prime=logratio_prime, reward=reward, reward_prime=reward_prime)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (got {eta})")
    return torch.mean(((logratio - logratio_prime) - eta * (reward - reward_prime)) ** 2)


def kl_shaped_reward(reward, logp, logp_ref, beta: float):
    """r - beta·(ln pi_t(y|x) - ln pi_ref(y|x)): the KL penalty folded into the reward.

    As in the official REBEL code and TRL's PPO/RLOO (a per-sample KL estimate). Works on torch
    tensors and numpy arrays of one shape.
    """
    if tuple(reward.shape) != tuple(logp.shape) or tuple(logp.shape) != tuple(logp_ref.shape):
        raise ValueError(f"reward, logp, logp_ref must share a shape (got {reward.shape}, {logp.shape}, {logp_ref.shape})")
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (got {beta})")
    return reward - beta * (logp - logp_ref)
