"""Deliberately broken update rules: each must fail the conformance check named next to it."""

import numpy as np
from scipy.special import expit, log_softmax, softmax


class SignError:
    """Mirror descent with the sign flipped: fails 'monotone improvement' (and the bound)."""

    family, eta = "mirror_descent", 1.0

    def update(self, api, logits, rng):
        return logits - self.eta * api.reward_table()


class SquaredReward:
    """Exponentiates r² instead of r: still improves on rewards in [0, 1], but adding c(x) to r changes
    the update: fails 'invariance'."""

    family, eta = "mirror_descent", 1.0

    def update(self, api, logits, rng):
        return logits + self.eta * api.reward_table() ** 2


class SelfPlaySignError:
    """Hedge that descends its win rate: fails 'average iterate: exploitability'."""

    family, eta = "equilibrium", 0.1

    def update(self, api, logits, rng):
        pi = softmax(logits, axis=1)
        wins = np.einsum("xyz,xz->xy", api.preference_table(), pi)
        return logits - self.eta * wins


class DPOMissingBeta:
    """Population DPO by gradient descent whose logit forgets beta (sigma(h_w - h_l) instead of
    sigma(beta·(h_w - h_l))): converges to pi_ref·exp(r), not pi*_beta: fails 'reaches pi*_beta'."""

    family, beta = "dpo", 0.5

    def update(self, api, logits, rng):
        P, ref = api.preference_table(), np.log(api.pi_ref)
        for _ in range(200):
            h = log_softmax(logits, axis=1) - ref
            d = h[:, :, None] - h[:, None, :]  # h(y) - h(y')
            g = (P - expit(d)).sum(axis=2)      # the bug: no beta in expit(beta·d)
            logits = logits + 0.5 * g
        return logits


class BudgetHog:
    """A sampled method that queries every (x, y) five times per update (1000 > 500 queries): fails
    the query budget."""

    family = "sampled"

    def update(self, api, logits, rng):
        X, Y = logits.shape
        x, y = np.repeat(np.arange(X), 5 * Y), np.tile(np.arange(Y), 5 * X)
        r = api.rewards(x, y).reshape(X, 5, Y).mean(axis=1)
        return logits + r
