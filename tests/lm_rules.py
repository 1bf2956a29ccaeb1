"""A researcher's REBEL on the LM back-end (``lm_update`` of the `testbed check` / spec interface), and planted
bugs in it: :class:`LMRebel` must pass the LM battery, every other class fails it
(tests/test_conformance_mutants.py)."""

import torch


class LMRebel:
    """REBEL on an LM: two responses per prompt from pi_t, the KL-shaped reward, and the regression of
    Δ ln pi_theta/pi_t onto eta·Δr (the official code's form) by the back-end's solver."""

    family, kinds = "mirror_descent", ("lm",)
    name, eta, beta, epochs = "my-lm-rebel", 1.0, 0.05, 1

    def seq(self, api, q, qm, y):
        return api.seq_logprob(q, qm, y)

    def pairs(self, api, q2, qm2):
        return api.sample(q2, qm2)

    def lm_update(self, api, q, qm):
        B = len(q)
        q2, qm2 = torch.cat([q, q]), torch.cat([qm, qm])
        y = self.pairs(api, q2, qm2)                               # y, y' ~ pi_t: rows i and B + i
        ro = api.rollout(q2, qm2, y)
        lp_t = self.anchor_lm(ro)                                  # ln pi_t(y|x): a constant
        r = self.reward_lm(ro, B)

        def loss(i):
            j = torch.cat([i, i + B])
            h = self.logratio(api, q2[j], qm2[j], y[j], lp_t[j])
            n = len(i)
            return (((h[:n] - h[n:]) - self.eta * (r[j][:n] - r[j][n:])) ** 2).mean()  # the official form

        return api.optimise(loss, B, self.epochs)

    def logratio(self, api, q, qm, y, lp_t):
        return self.seq(api, q, qm, y) - lp_t

    def anchor_lm(self, ro):
        return ro["lp"].sum(1)

    def reward_lm(self, ro, B):
        return ro["score"] - self.beta * (ro["lp"].sum(1) - ro["ref"].sum(1))


class LMSignFlip(LMRebel):
    def reward_lm(self, ro, B):
        return -super().reward_lm(ro, B)


class LMForgotInvEta(LMRebel):
    def lm_update(self, api, q, qm):
        eta, self.eta = self.eta, 1.0
        try:
            return super().lm_update(api, q, qm)
        finally:
            self.eta = eta


class LMMeanOverTokens(LMRebel):
    """Length-normalised log-probabilities: the mean over the response's tokens instead of their sum."""

    def seq(self, api, q, qm, y):
        lp, mask = api.logprobs(q, qm, y)
        return lp.sum(1) / mask.sum(1)

    def anchor_lm(self, ro):
        return ro["lp"].sum(1) / ro["mask"].sum(1)


class LMAnchorRef(LMRebel):
    """Regresses ln pi_theta/pi_ref instead of ln pi_theta/pi_t."""

    def anchor_lm(self, ro):
        return ro["ref"].sum(1)


class LMKLDropped(LMRebel):
    def reward_lm(self, ro, B):
        return ro["score"]


class LMSameResponse(LMRebel):
    """y' = y: the second response is a copy of the first."""

    def pairs(self, api, q2, qm2):
        y = api.sample(q2[: len(q2) // 2], qm2[: len(q2) // 2])
        return torch.cat([y, y])


class LMMissingStopGradient(LMRebel):
    """ln pi_t recomputed inside the loss with its gradient: the log-ratio is identically 0."""

    def logratio(self, api, q, qm, y, lp_t):
        return self.seq(api, q, qm, y) - api.seq_logprob(q, qm, y)


class LMRewardOfYForBoth(LMRebel):
    """Both responses of a pair get the first one's reward: the target is 0."""

    def reward_lm(self, ro, B):
        r = super().reward_lm(ro, B)
        return torch.cat([r[:B], r[:B]])
