"""One implementation per method: the *whole* update (collect, KL shaping, baselines, the loss, the solver's
epochs × shuffled minibatches of Adam) of REBEL, PPO, DPO, RLOO and GRPO on a one-token-response LM equals the
update of the same algorithm on the equivalent tabular bandit.

The LM is :class:`~testbed.llm.toy.TableLM`: its parameters are a logit table, so with one-token prompts (the
context) and one-token responses (the action; the pad token is never sampled) it is the tabular softmax
policy with logits ``table[x, 1:]``. Both back-ends get the same draws (the responses of one batch, drawn once
from pi_t) and the same shuffling generator; everything else is each back-end's own code path. The new logit
policies (log-probabilities) must agree to 1e-8, both in float64 (PPO: its LM whitening divides by
sqrt(var + 1e-8), the bandit normalisation by std + 1e-8: 1e-10 apart).
"""

import functools

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.algorithms import ALGORITHMS, build_config  # noqa: E402
from testbed.llm.spec import parse_lm_spec  # noqa: E402
from testbed.llm.toy import WORDS, TableCritic, TableLM  # noqa: E402
from testbed.policies import TabularSoftmax  # noqa: E402
from testbed.problems import TabularBandit  # noqa: E402

V = len(WORDS) + 3           # [PAD]=0, [EOS]=1, [BOS]=2, then the words
PROMPTS = (3, 4, 5, 6)       # context x = the prompt token PROMPTS[x]
B, LR, SEED = 8, 0.05, 11    # prompts per iteration, learning rate, shuffling seed
EPS = 1e-3
"""Adam's epsilon on both back-ends. Adam's scale-free step turns a rounding-level gradient into a full step of
±lr whose sign depends on the float format: for a pair at one context the softmax terms of
grad[ln pi(y) - ln pi(y')] cancel exactly in exact arithmetic, leaving ~1e-17 (float64) or ~1e-9 (float32).
With eps = 1e-3 such a gradient moves a logit by < 1e-7, while the real gradients (> 1e-2 here) keep their
normalised steps."""

CASES = {  # algorithm -> (its parameters, the same on both back-ends)
    "rebel": {"eta": 2.0, "beta": 0.05, "mode": "sampled", "solver": "adam", "form": "official", "epochs": 2,
              "minibatch": 4},
    "ppo": {"beta": 0.05, "epochs": 2, "minibatch": 4, "clip_eps": 0.2, "value_clip": 0.0, "normalize_advantage": True},
    "dpo": {"beta": 0.3, "mode": "online", "epochs": 2, "minibatch": 4},
    "rloo": {"k": 3, "beta": 0.05, "epochs": 2, "minibatch": 6, "clip_eps": 0.2},
    "grpo": {"k": 3, "beta": 0.05, "epochs": 2, "minibatch": 6, "clip_eps": 0.2},
}
BANDIT_ONLY = {"rebel": {"pairs": B, "lr": LR}, "ppo": {"batch": B, "lr": LR, "critic": "table"},
               "dpo": {"pairs": B, "lr": LR, "labels": "deterministic"}, "rloo": {"contexts": B, "lr": LR},
               "grpo": {"contexts": B, "lr": LR}}
LM_ONLY = {"ppo": {"critic": "backbone", "gamma": 1.0, "lam": 0.95}}


def initial_table() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(V, V, generator=g) * 0.7


def rewards_table() -> np.ndarray:
    """Distinct rewards r[x, a] of response token a + 1 (no ties: online DPO ranks pairs the same on both)."""
    return np.random.default_rng(4).permutation(len(PROMPTS) * (V - 1)).reshape(len(PROMPTS), V - 1) / 10.0


class TableReward:
    """The LM reward of a one-token response to a one-token prompt: r[x, a]."""

    def __call__(self, q, qm, y):
        x = torch.as_tensor([PROMPTS.index(int(t)) for t in q[:, -1]])
        return torch.as_tensor(rewards_table()[x.numpy(), (y[:, 0] - 1).numpy()], dtype=torch.float64)


class Draws:
    """Responses to hand out in order: each call to a sampler takes the next array."""

    def __init__(self, arrays):
        self.arrays = list(arrays)

    def next(self):
        return self.arrays.pop(0)


def plan(name: str, logits: np.ndarray):
    """The draws of one update: contexts, then each sampler call's actions, all from pi_0 (fixed seed).
    Online DPO's second response is drawn from pi_0 conditioned on differing from the first."""
    rng = np.random.default_rng(7)
    k = CASES[name].get("k", 1)
    x = rng.integers(len(PROMPTS), size=B)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    xs = np.repeat(x, k)
    draw = lambda ctx: np.array([rng.choice(V - 1, p=probs[c]) for c in ctx])  # noqa: E731
    if name == "dpo":
        y = draw(x)
        y2 = np.array([rng.choice(np.delete(np.arange(V - 1), a), p=np.delete(probs[c], a) / (1 - probs[c, a]))
                       for c, a in zip(x, y)])
        return x, [y, y2]
    return x, [draw(xs)] + ([draw(x)] if name == "rebel" else [])


def bandit_update(name: str, monkeypatch) -> tuple[np.ndarray, object]:
    logits = initial_table()[list(PROMPTS), 1:].double().numpy()
    problem = TabularBandit(rewards_table(), pi_ref=np.exp(TabularSoftmax(logits).log_probs()))
    x, ys = plan(name, logits)
    draws = Draws(ys)
    monkeypatch.setattr(TabularBandit, "sample_contexts", lambda self, rng, n: x)
    monkeypatch.setattr(TabularSoftmax, "sample", lambda self, rng, xx: draws.next())
    if name == "dpo":
        import testbed.algorithms.dpo as dpo
        monkeypatch.setattr(dpo, "sample_distinct", lambda rng, probs, y: draws.next())
    if name == "rebel":  # REBEL draws uniforms, then responses by inverse CDF on the whole stack (not policy.sample)
        import testbed.algorithms.rebel as rebel
        monkeypatch.setattr(rebel.REBEL, "_raw_draws", lambda self, rng, p, n, k: (x,) + (np.zeros(n),) * 4)
        import testbed.algorithms.stacked_draws as stacked_draws  # by row (inverse_cdf) or by table (cdf_draw)
        monkeypatch.setattr(stacked_draws, "inverse_cdf", lambda cdf, u: draws.next())
        monkeypatch.setattr(stacked_draws, "cdf_draw", lambda columns, rows, u: draws.next())
    monkeypatch.setattr(torch.optim, "Adam", functools.partial(torch.optim.Adam, eps=EPS))
    cls = ALGORITHMS[name]
    cfg = build_config(cls.Config, {**CASES[name], **BANDIT_ONLY[name]}, name, "bandit")
    rng = np.random.default_rng(SEED)
    step = cls(cfg, problem, rng).update(TabularSoftmax(logits), rng)
    monkeypatch.undo()
    return step.policy.params, step


def lm_update(name: str, monkeypatch) -> tuple[np.ndarray, object]:
    from testbed.llm.backend import LMBackend
    from testbed.llm.train import build

    logits = initial_table()[list(PROMPTS), 1:].double().numpy()
    x, ys = plan(name, logits)
    spec = parse_lm_spec(toy_spec({"name": name, **CASES[name], **LM_ONLY.get(name, {})}, batch=B, minibatch=B,
                                  lr=LR, adam_eps=EPS, max_grad_norm=0, weight_decay=0.0, max_new_tokens=1,
                                  lr_schedule="constant"))
    n, cfg, _ = spec.algorithms[0]
    ctx, algo = build(spec, n, cfg, 0, model=TableLM(initial_table()), reward=TableReward(),
                      critic=TableCritic(V) if name == "ppo" else None)
    ctx.rng = np.random.default_rng(SEED)
    if name == "dpo":  # the bandit's preference oracle draws one uniform per pair (its labels are deterministic here)
        ctx.rng.random(B)
    tokens = [torch.as_tensor(a + 1)[:, None] for a in ys]
    # REBEL and DPO draw both responses of every prompt in one generate call
    draws = Draws([torch.cat(tokens)] if name in ("rebel", "dpo") else tokens)
    monkeypatch.setattr(LMBackend, "sample", lambda self, q, qm, ref=False: draws.next())
    q = torch.as_tensor([[PROMPTS[i]] for i in x])
    qm = torch.ones_like(q)
    step = algo.lm_update(q, qm)
    monkeypatch.undo()
    table = ctx.accelerator.unwrap_model(ctx.prepared)
    table = table.policy if hasattr(table, "policy") else table
    return table.table.detach()[list(PROMPTS), 1:].double().numpy(), step


def log_policy(logits: np.ndarray) -> np.ndarray:
    """ln pi(a|x) of a logit table (a policy is its logits up to a constant per context)."""
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


@pytest.mark.parametrize("name", list(CASES))
def test_one_token_lm_update_equals_the_tabular_update(name, monkeypatch):
    before = log_policy(initial_table()[list(PROMPTS), 1:].double().numpy())
    bandit, bstep = bandit_update(name, monkeypatch)
    lm, lstep = lm_update(name, monkeypatch)
    bandit, lm = log_policy(bandit), log_policy(lm)
    moved = np.abs(bandit - before).max()
    assert moved > 1e-2, "the update must move the policy for the comparison to mean anything"
    err = np.abs(lm - bandit).max()
    assert err < 1e-8, f"{name}: LM and bandit updates differ by {err:.2e} (the update moved the logits by {moved:.2e})"
    assert lstep.samples == bstep.samples  # the same responses
    # the same oracle calls: online DPO's LM scores both responses with the reward, the bandit asks one preference
    assert lstep.queries == bstep.queries * (2 if name == "dpo" else 1)


def test_the_comparison_sees_a_changed_update(monkeypatch):
    """The test above can fail: one more epoch on one back-end moves its update far beyond the tolerance."""
    bandit, _ = bandit_update("rebel", monkeypatch)
    saved = dict(CASES["rebel"])
    CASES["rebel"]["epochs"] = 3
    try:
        lm, _ = lm_update("rebel", monkeypatch)
    finally:
        CASES["rebel"].clear()
        CASES["rebel"].update(saved)
    assert np.abs(log_policy(lm) - log_policy(bandit)).max() > 1e-3
