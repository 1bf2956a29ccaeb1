"""A researcher's REBEL written against the `testbed check` interface, and planted bugs in it.

:class:`PopulationREBEL` is correct: it must pass its battery. Every other class changes one thing
(the mutation table of tests/test_conformance_mutants.py) and must fail the check named for it.
"""

import numpy as np
import torch


class PopulationREBEL:
    """Exact REBEL: min over theta of the population regression

        sum_x rho(x) sum_{y, y'} pi_t(y|x)·mu(y'|x)·((h(y) - h(y'))/eta - (q(y) - q(y')))²,

    h = ln pi_theta - ln pi_t, q = r - beta·(ln pi_t - ln pi_ref), mu = pi_t, solved by a Gauss-Newton
    step (min-norm least squares on the Jacobian of the residuals; exact for tabular and log-linear
    policies, where h(y) - h(y') is linear in theta)."""

    family, kinds = "mirror_descent", ("tabular", "loglinear", "mlp")
    name, eta, beta, epochs = "my-rebel", 1.0, 0.0, 1

    def mu(self, api, pi):
        return pi

    def weights(self, api, pi):
        return torch.as_tensor(api.rho)[:, None, None] * pi[:, :, None] * self.mu(api, pi)[:, None, :]

    def shaped(self, api, lp_t):
        r = torch.as_tensor(api.reward_table())
        return r - self.beta * (lp_t - torch.log(torch.as_tensor(api.pi_ref)))

    def anchor(self, api, theta, lp_t):
        return lp_t

    def h(self, api, theta, lp_t):
        return api.log_probs(theta) - self.anchor(api, theta, lp_t)

    def scale(self, dh, eta):
        return dh / eta

    def target(self, q):
        return q[:, :, None] - q[:, None, :]

    def step(self, api, theta, eta):
        lp_t = api.log_probs(theta)  # theta does not require grad: pi_t is a constant (stop-gradient)
        q = self.shaped(api, lp_t)
        w = self.weights(api, lp_t.exp())
        w = torch.where(w > 1e-200, w, 0.0).sqrt()[..., None]  # pairs of weight < 1e-200 dropped (no subnormals)
        flat = theta.reshape(-1)
        h = lambda th: self.h(api, th.reshape(theta.shape), lp_t)  # noqa: E731
        H = torch.func.jacfwd(h)(flat)  # [X, Y, P]; Δh is linear in theta for tabular and log-linear policies
        rows = w * self.scale(H[:, :, None] - H[:, None, :], eta)
        h0 = h(flat)
        res = w[..., 0] * (self.scale(h0[:, :, None] - h0[:, None, :], eta) - self.target(q))
        P = flat.shape[0]
        return (flat - torch.linalg.pinv(rows.reshape(-1, P)) @ res.reshape(-1)).reshape(theta.shape)

    def update(self, api, params, rng):
        theta = torch.as_tensor(np.asarray(params, dtype=np.float64))
        for _ in range(self.epochs):
            theta = self.step(api, theta, self.eta / self.epochs)
        return theta.numpy()


# ----- the mutants: each changes one line of the rule above ------------------------------------------
class ForgotInvEta(PopulationREBEL):
    """Regresses Δh onto Δr: the 1/eta is forgotten, so the step is 1 whatever eta is claimed."""

    def scale(self, dh, eta):
        return dh


class EtaSquared(PopulationREBEL):
    """Divides by eta² (the step is eta²)."""

    def scale(self, dh, eta):
        return dh / eta**2


class DoubledStep(PopulationREBEL):
    """Applies the solved displacement twice."""

    def update(self, api, params, rng):
        return 2 * super().update(api, params, rng) - np.asarray(params, dtype=np.float64)


class UniformYPrime(PopulationREBEL):
    """Draws y' uniformly instead of from pi_t: the same step on a tabular policy, not on a log-linear one."""

    def mu(self, api, pi):
        return torch.full_like(pi, 1.0 / pi.shape[1])


class YPrimeIsY(PopulationREBEL):
    """Pairs each response with itself (y' = y): the regression has no signal, the policy never moves."""

    def weights(self, api, pi):
        return torch.as_tensor(api.rho)[:, None, None] * torch.diag_embed(pi)


class AnchorPiRef(PopulationREBEL):
    """Regresses ln pi_theta/pi_ref instead of ln pi_theta/pi_t."""

    def anchor(self, api, theta, lp_t):
        return torch.log(torch.as_tensor(api.pi_ref))


class SignFlip(PopulationREBEL):
    """Regresses onto -Δr."""

    def target(self, q):
        return q[:, None, :] - q[:, :, None]


class MissingStopGradient(PopulationREBEL):
    """Recomputes ln pi_t from the parameters being fitted (no stop-gradient): h is identically 0."""

    def anchor(self, api, theta, lp_t):
        return api.log_probs(theta)


class EpochsOffByOne(PopulationREBEL):
    """Splits the step into `epochs` sub-steps of eta/epochs but loops range(epochs + 1)."""

    def update(self, api, params, rng):
        theta = torch.as_tensor(np.asarray(params, dtype=np.float64))
        for _ in range(self.epochs + 1):
            theta = self.step(api, theta, self.eta / self.epochs)
        return theta.numpy()


class MeanOverContexts(PopulationREBEL):
    """Averages the loss over contexts (a mean) instead of the rho-weighted sum: invisible on a
    tabular policy (each context is fitted alone), wrong where contexts share parameters."""

    def weights(self, api, pi):
        return super().weights(api, pi) / torch.as_tensor(api.rho)[:, None, None] / len(api.rho)


class KLDropped(PopulationREBEL):
    """Takes beta but regresses onto r, not the KL-shaped reward r - beta·ln(pi_t/pi_ref)."""

    def shaped(self, api, lp_t):
        return torch.as_tensor(api.reward_table())


class RewardOfYForBoth(PopulationREBEL):
    """Uses r(x, y) for both responses of a pair: the target is 0."""

    def target(self, q):
        return torch.zeros(q.shape[0], q.shape[1], q.shape[1], dtype=q.dtype)


class ClaimsHalf(PopulationREBEL):
    """Claims eta = 0.5 but steps with 1 (a constant left in the code)."""

    eta = 0.5

    def update(self, api, params, rng):
        return self.step(api, torch.as_tensor(np.asarray(params, dtype=np.float64)), 1.0).numpy()


class ClaimsTen(ClaimsHalf):
    """Claims eta = 10 but steps with 1."""

    eta = 10.0


class StaleFiveX(PopulationREBEL):
    """Exact on its first call; then state it keeps makes every later step 5·eta (an accumulating-state bug)."""

    calls = 0

    def update(self, api, params, rng):
        self.calls += 1
        theta = torch.as_tensor(np.asarray(params, dtype=np.float64))
        return self.step(api, theta, self.eta * (5.0 if self.calls > 1 else 1.0)).numpy()


class StaleHalf(StaleFiveX):
    """Exact on its first call; then 0.5·eta."""

    def update(self, api, params, rng):
        self.calls += 1
        theta = torch.as_tensor(np.asarray(params, dtype=np.float64))
        return self.step(api, theta, self.eta * (0.5 if self.calls > 1 else 1.0)).numpy()
