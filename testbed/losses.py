"""Loss functions as pure functions of tensors (rlax style): no models, no optimisers, no I/O.

Both the bandit track and the language-model track import these. Every function checks its
arguments' shapes first and fails loudly. The REBEL, PPO and DPO/IPO losses average over the last
axis only: given [S, N] tensors (S seeds stacked by the batched runner) they return S losses, each
bit-for-bit the loss of that seed's [N] tensors.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _same_1d(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected 1-d tensors of one shape [N], got {shapes}")


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) < 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected tensors of one shape [N] (or [S, N] for S stacked seeds), got {shapes}")


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
    _same_shape(logratio=logratio, logratio_prime=logratio_prime, reward=reward, reward_prime=reward_prime)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (got {eta})")
    return torch.mean(((logratio - logratio_prime) / eta - (reward - reward_prime)) ** 2, dim=-1)


def rebel_loss_official(logratio: torch.Tensor, logratio_prime: torch.Tensor, reward: torch.Tensor,
                        reward_prime: torch.Tensor, eta: float) -> torch.Tensor:
    """REBEL's loss as the official code writes it: mean((Δ logratio - eta·Δr)²) = eta²·rebel_loss.

    Same minimiser as :func:`rebel_loss` (it is the same function scaled by eta²); the official
    TL;DR script (github.com/ZhaolinGao/REBEL) uses this form. Arguments as for :func:`rebel_loss`.
    """
    _same_shape(logratio=logratio, logratio_prime=logratio_prime, reward=reward, reward_prime=reward_prime)
    if not eta > 0:
        raise ValueError(f"eta must be > 0 (got {eta})")
    return torch.mean(((logratio - logratio_prime) - eta * (reward - reward_prime)) ** 2, dim=-1)


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


def ppo_clip_loss(logratio: torch.Tensor, advantage: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """PPO's clipped surrogate, as a loss to minimise.

    L_clip(theta) = -mean_i min(rho_i·A_i, clip(rho_i, 1 - eps, 1 + eps)·A_i),  rho_i = pi_theta(y_i|x_i)/pi_t(y_i|x_i)

    Schulman et al., "Proximal Policy Optimization Algorithms", 2017, https://arxiv.org/abs/1707.06347, eq. (7).
    A sample with rho > 1 + eps and A > 0 (or rho < 1 - eps and A < 0) contributes zero gradient.

    Args:
      logratio: ln pi_theta(y|x) - ln pi_t(y|x), shape [N].
      advantage: A(x, y), shape [N] (treated as a constant).
      clip_eps: eps in (0, 1).
    """
    _same_shape(logratio=logratio, advantage=advantage)
    if not 0 < clip_eps < 1:
        raise ValueError(f"clip_eps must be in (0, 1) (got {clip_eps})")
    ratio = torch.exp(logratio)
    return -torch.mean(torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantage), dim=-1)


def value_loss(value: torch.Tensor, value_old: torch.Tensor, target: torch.Tensor,
               clip_eps: float | None = None) -> torch.Tensor:
    """Critic regression 0.5·mean (V - R)², or with value clipping (as in OpenAI baselines / CleanRL)
    0.5·mean max((V - R)², (V_old + clip(V - V_old, -eps, eps) - R)²). Shapes [N]."""
    _same_shape(value=value, value_old=value_old, target=target)
    err = (value - target) ** 2
    if clip_eps is not None:
        clipped = value_old + torch.clamp(value - value_old, -clip_eps, clip_eps)
        err = torch.maximum(err, (clipped - target) ** 2)
    return 0.5 * torch.mean(err, dim=-1)


def dpo_loss(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, beta: float,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Direct Preference Optimisation.

    L(theta) = -mean_i ln sigma(beta·[ln pi_theta(y_w|x)/pi_ref(y_w|x) - ln pi_theta(y_l|x)/pi_ref(y_l|x)])

    Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    NeurIPS 2023, https://arxiv.org/abs/2305.18290, eq. (7).

    Args:
      logratio_chosen, logratio_rejected: ln pi_theta - ln pi_ref of the chosen / rejected response, shape [N].
      beta: > 0.
      weight: optional non-negative weights [N] (a weighted mean: the population loss over all pairs).
    """
    _same_shape(logratio_chosen=logratio_chosen, logratio_rejected=logratio_rejected)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    # -ln sigma(-z) = softplus(z) = max(z, 0) + ln(1 + e^{-|z|}): first and second derivatives stay
    # accurate where sigma(z) rounds to 1 (logsigmoid's double backward returns 0 there, which stalls
    # Newton-type solvers), and each element is computed the same way wherever it sits in a tensor
    # (torch's fused softplus kernel rounds differently in its SIMD body and its scalar tail, which
    # would make a stack of seeds differ from each seed alone)
    z = -beta * (logratio_chosen - logratio_rejected)
    pos = z > 0  # branches by torch.where, not abs/relu, whose derivative at z = 0 (pi = pi_ref) is 0, not ½
    per = torch.where(pos, z, torch.zeros_like(z)) + torch.log1p(torch.exp(torch.where(pos, -z, z)))
    return _mean(per, weight)


def ipo_loss(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, tau: float,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Identity Preference Optimisation: mean_i (h_i - 1/(2·tau))², h_i = logratio_chosen - logratio_rejected.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    AISTATS 2024, https://arxiv.org/abs/2310.12036, eq. (17). Arguments as for :func:`dpo_loss`, tau > 0.
    """
    _same_shape(logratio_chosen=logratio_chosen, logratio_rejected=logratio_rejected)
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (got {tau})")
    return _mean((logratio_chosen - logratio_rejected - 1 / (2 * tau)) ** 2, weight)


def _mean(per: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per.mean(dim=-1)
    if weight.shape != per.shape:
        raise ValueError(f"weight must have shape {tuple(per.shape)} (got {tuple(weight.shape)})")
    return torch.sum(weight * per, dim=-1) / torch.sum(weight, dim=-1)


def reinforce_loss(logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a baseline: L(theta) = -mean_i A_i·ln pi_theta(y_i|x_i), A treated as a constant.

    Williams, "Simple statistical gradient-following algorithms for connectionist reinforcement
    learning", Machine Learning 8, 1992. Shapes [N].
    """
    _same_1d(logp=logp, advantage=advantage)
    return -torch.mean(advantage.detach() * logp)


def leave_one_out_advantage(reward: torch.Tensor) -> torch.Tensor:
    """RLOO's advantage: A_ij = r_ij - (1/(k-1))·sum_{l != j} r_il for k samples per prompt.

    Kool, van Hoof, Welling, "Buy 4 REINFORCE samples, get a baseline for free!", ICLR DeepRL
    workshop 2019; Ahmadian et al., "Back to Basics: Revisiting REINFORCE style optimization for
    learning from human feedback in LLMs", ACL 2024, https://arxiv.org/abs/2402.14740, eq. (7).

    Args:
      reward: shape [N, k], k >= 2 samples of prompt i in row i.
    Returns: shape [N, k].
    """
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise ValueError(f"reward must have shape [N, k] with k >= 2 (got {tuple(reward.shape)})")
    k = reward.shape[1]
    return reward - (reward.sum(dim=1, keepdim=True) - reward) / (k - 1)


def gae(reward: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over token positions.

    delta_t = r_t + gamma·V_{t+1} - V_t (V = 0 after the last valid token),
    A_t = sum_l (gamma·lam)^l delta_{t+l};  returns = A + V.

    Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    ICLR 2016, https://arxiv.org/abs/1506.02438, eq. (16). Tokens after the response ends (mask 0)
    get advantage 0; they must come after the valid ones (right padding).

    Args:
      reward, value, mask: shape [B, T]; mask is 1 on response tokens (up to and including EOS).
    """
    if reward.ndim != 2 or reward.shape != value.shape or reward.shape != mask.shape:
        raise ValueError(f"reward, value, mask must share a shape [B, T] (got {tuple(reward.shape)}, "
                         f"{tuple(value.shape)}, {tuple(mask.shape)})")
    m = mask.to(reward.dtype)
    r, v = reward * m, value * m
    adv = torch.zeros_like(r)
    last = torch.zeros_like(r[:, 0])
    T = r.shape[1]
    for t in reversed(range(T)):
        v_next = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * v_next - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean)/std over the entries where ``mask`` is 1 (all if None), as TRL's ``masked_whiten``."""
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m if mask is not None else out


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: the token-mean negative log-likelihood -sum(mask·ln p)/sum(mask). Shapes [B, T]."""
    if token_logp.shape != mask.shape:
        raise ValueError(f"token_logp and mask must share a shape (got {tuple(token_logp.shape)}, {tuple(mask.shape)})")
    m = mask.to(token_logp.dtype)
    return -(token_logp * m).sum() / m.sum().clamp(min=1)


def group_normalised_advantage(reward: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO's advantage: A_ij = (r_ij - mean_l r_il) / (std_l r_il + eps), std unbiased (k - 1).

    Shao et al., "DeepSeekMath", 2024, https://arxiv.org/abs/2402.03300, §4.1.2 (outcome supervision);
    eps = 1e-4 and the unbiased std as TRL's GRPOTrainer computes them. ``scale=False`` only centres
    (Liu et al. 2025, "Understanding R1-Zero-like training", Dr. GRPO).

    Args:
      reward: shape [N, k], k >= 2 samples of prompt i in row i.
    Returns: shape [N, k].
    """
    if reward.ndim != 2 or reward.shape[1] < 2:
        raise ValueError(f"reward must have shape [N, k] with k >= 2 (got {tuple(reward.shape)})")
    centred = reward - reward.mean(dim=1, keepdim=True)
    return centred / (reward.std(dim=1, keepdim=True) + eps) if scale else centred


def per_prompt_advantage(reward: torch.Tensor, prompt: torch.Tensor, eps: float = 1e-8, scale: bool = True) -> torch.Tensor:
    """DDPO's per-prompt baseline: (r - mean_p)/(std_p + eps) over the samples of the same prompt, the
    population std (numpy's default, as DDPO's ``PerPromptStatTracker``); a prompt with one sample in the batch
    takes the whole batch's mean and std. ``scale`` False: r - mean_p only.

    Black et al., "Training Diffusion Models with Reinforcement Learning", 2023, https://arxiv.org/abs/2305.13301,
    §4.3 and App. B (within a batch; DDPO also keeps a buffer across iterations).

    Args:
      reward: [N]; prompt: [N] or [N, ...] (rows equal for the same prompt).
    """
    if reward.ndim != 1 or len(prompt) != len(reward):
        raise ValueError(f"reward must be [N] and prompt [N, ...] (got {tuple(reward.shape)}, {tuple(prompt.shape)})")
    _, group = torch.unique(prompt.reshape(len(prompt), -1), dim=0, return_inverse=True)
    out = torch.empty_like(reward)
    for g in torch.unique(group):
        idx = group == g
        pool = reward[idx] if int(idx.sum()) > 1 else reward
        centred = reward[idx] - pool.mean()
        out[idx] = centred / (pool.std(unbiased=False) + eps) if scale else centred
    return out


def prompt_key(row: torch.Tensor) -> str:
    """A prompt row's key in :func:`tracked_prompt_advantage`'s buffers: the hex of its bytes (dtype and shape
    fixed within a run), or their SHA-256 when over 64 bytes (an embedding)."""
    raw = row.detach().cpu().contiguous().numpy().tobytes()
    return raw.hex() if len(raw) <= 64 else hashlib.sha256(raw).hexdigest()


def tracked_prompt_advantage(reward: torch.Tensor, prompt: torch.Tensor, stats: dict, buffer: int, min_count: int,
                             scale: bool = True) -> torch.Tensor:
    """DDPO's ``PerPromptStatTracker.update`` (ddpo_pytorch/stat_tracking.py): each prompt's rewards are appended
    to its buffer of the last ``buffer`` rewards (kept across iterations in ``stats``, {:func:`prompt_key`: float64
    array}, updated in place), then A = (r - mean)/(std + 1e-6) over the buffer once it holds ``min_count``
    rewards, over the whole batch's rewards before; population std, float64 numpy arithmetic as DDPO's.
    ``scale`` False: r - mean only. Returns float64 [N].

    Black et al., "Training Diffusion Models with Reinforcement Learning", 2023, https://arxiv.org/abs/2305.13301,
    App. B.

    Args:
      reward: [N]; prompt: [N] or [N, ...] (rows equal for the same prompt).
    """
    if reward.ndim != 1 or len(prompt) != len(reward):
        raise ValueError(f"reward must be [N] and prompt [N, ...] (got {tuple(reward.shape)}, {tuple(prompt.shape)})")
    if buffer < 1 or min_count < 1:
        raise ValueError(f"buffer and min_count must be positive (got {buffer}, {min_count})")
    rewards = reward.detach().cpu().double().numpy()
    rows, group = torch.unique(prompt.reshape(len(prompt), -1), dim=0, return_inverse=True)
    group = group.cpu().numpy()
    out = np.empty_like(rewards)
    for g, row in enumerate(rows):
        idx = group == g
        mine = rewards[idx]
        key = prompt_key(row)
        buf = np.concatenate([stats.get(key, np.empty(0)), mine])[-buffer:]  # deque(maxlen=buffer).extend
        stats[key] = buf
        pool = rewards if len(buf) < min_count else buf
        centred = mine - np.mean(pool)
        out[idx] = centred / (np.std(pool) + 1e-6) if scale else centred
    return torch.from_numpy(out)


def diffusion_dpo_loss(err_chosen: torch.Tensor, err_rejected: torch.Tensor, err_ref_chosen: torch.Tensor,
                       err_ref_rejected: torch.Tensor, beta: float, timesteps: int = 1,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion-DPO: DPO with the ELBO of each image in place of its log-likelihood.

    L(theta) = -mean_i ln sigma(-beta·T·[(e_w - e_w^ref) - (e_l - e_l^ref)]),
    e = |eps - eps_theta(x_t, t)|², e^ref = |eps - eps_ref(x_t, t)|²

    for the preferred (w) and dispreferred (l) final images, noised to x_t = sqrt(a_bar_t)·x_0 +
    sqrt(1 - a_bar_t)·eps at a sampled timestep t with a sampled eps (the same t and eps for the policy
    and the reference; weighting omega(lambda_t) = 1, as the paper trains).
    Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", CVPR 2024,
    https://arxiv.org/abs/2311.12908, eq. (14). (The authors' code takes the pixel mean of e and a scale
    -beta/2 in place of -beta·T: the same loss at another beta.)

    Args:
      err_chosen, err_rejected: e_w, e_l under pi_theta, shape [N].
      err_ref_chosen, err_ref_rejected: the same under pi_ref, shape [N].
      beta: > 0; timesteps: T >= 1, the noise schedule's length (the beta·T scaling).
      weight: optional non-negative weights [N] (ties: weight 0), as for :func:`dpo_loss`.
    """
    _same_shape(err_chosen=err_chosen, err_rejected=err_rejected, err_ref_chosen=err_ref_chosen,
                err_ref_rejected=err_ref_rejected)
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (got {beta})")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1 (got {timesteps!r})")
    # -ln sigma(-beta·T·d) is dpo_loss with the implicit log-ratios h = -e + e^ref (the ELBO's ratio)
    return dpo_loss(err_ref_chosen - err_chosen, err_ref_rejected - err_rejected, beta * timesteps, weight)
