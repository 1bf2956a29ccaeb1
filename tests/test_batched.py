"""Batched seeds: a stack of S runs (seeds, and instances of one shape) updated as one array
computation gives every run exactly — bit for bit — what it gets when run alone."""

import re

import numpy as np
import pytest

from testbed.algorithms import ALGORITHMS, build_config
from testbed.experiments import load_spec
from testbed.experiments.runner import batch_groups, run_batch, run_one, run_spec
from testbed.metrics import bandit_metric_arrays, bandit_metrics
from testbed.policies import LogLinear, TabularSoftmax, lstsq_step, member, stack
from testbed.problems import ProblemBatch, TabularBandit, make_linear, make_tabular

# Two tabular instances of one shape (one with reward noise), two linear ones (one misspecified);
# every batchable mode of REBEL and NPG: exact, sampled least squares or Adam, y' from pi_t / uniform /
# pi_ref, KL shaping, damped sample Fisher; PPO (table and linear critic, KL shaping, value clipping,
# entropy bonus) and online/offline DPO and IPO, trained by Adam on stacked seeds; PPO with an MLP
# critic, population DPO and REBEL with an offline y' set are not batchable and must run alone.
SPEC = """
name: batched
problems:
  - {kind: tabular, family: random, contexts: 5, actions: 4, seed: 0}
  - {kind: tabular, family: random, contexts: 5, actions: 4, seed: 1, noise_std: 0.3}
  - {kind: linear, family: random, contexts: 4, actions: 5, dim: 3, seed: 0}
  - {kind: linear, family: random, contexts: 4, actions: 5, dim: 3, seed: 2, misspecification: 0.2}
algorithms:
  - {name: rebel, mode: exact, eta: 2.0}
  - {name: rebel, mode: exact, eta: 1.0, beta: 0.1, y_prime: ref, label: rebel-kl-ref}
  - {name: rebel, mode: sampled, pairs: 40, eta: 1.0}
  - {name: rebel, mode: sampled, pairs: 40, eta: 0.5, beta: 0.05, y_prime: uniform, label: rebel-kl-uniform}
  - {name: npg, mode: exact, eta: 1.0, beta: 0.2}
  - {name: npg, mode: sampled, samples: 60, eta: 1.0}
  - {name: npg, mode: sampled, samples: 60, eta: 1.0, damping: 0.1, label: npg-damped}
  - {name: rebel, mode: sampled, solver: adam, pairs: 40, epochs: 2, minibatch: 16, label: rebel-adam}
  - {name: ppo, batch: 30, epochs: 2, minibatch: 8}
  - {name: ppo, batch: 30, epochs: 1, minibatch: 16, critic: linear, beta: 0.1, value_clip: 0.2, ent_coef: 0.01, label: ppo-kl}
  - {name: ppo, batch: 30, epochs: 1, minibatch: 30, critic: mlp, label: ppo-mlp-critic}
  - {name: dpo, mode: online, pairs: 20, epochs: 2, minibatch: 8, label: dpo-online}
  - {name: dpo, mode: offline, pairs: 50, minibatch: 16, loss: ipo, label: ipo-offline}
  - {name: dpo, mode: population, label: dpo-population}
  - {name: rebel, mode: sampled, pairs: 20, y_prime: offline, label: rebel-offline}
seeds: [0, 1, 2]
iterations: 8
eval_every: 3
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "batched.yaml"
    path.write_text(SPEC)
    return load_spec(path)


def test_groups_stack_seeds_and_instances_of_one_shape_and_leave_the_rest_alone(spec):
    groups = batch_groups(spec)
    sizes = {}
    for g in groups:
        plans = [spec.runs[i] for i in g]
        assert len({(p.label, p.iterations) for p in plans}) == 1
        sizes.setdefault(plans[0].algorithm, []).append(len(g))
    # 12 batchable configurations x {tabular, linear} shapes, each stacking 2 instances x 3 seeds
    assert sorted(sizes["rebel"] + sizes["npg"] + sizes["ppo"] + sizes["dpo"]) == [1] * 36 + [6] * 24
    assert sorted(i for g in groups for i in g) == list(range(len(spec.runs)))
    split = batch_groups(spec, jobs=4)  # stacks split so that every process gets work
    assert sorted(len(g) for g in split if spec.runs[g[0]].label == "rebel-sampled") == [1, 1, 1, 1, 2, 2, 2, 2]
    # ... except the seeds of a configuration that draws nothing on one problem: one computation, one stack
    exact = [[spec.runs[i] for i in g] for g in split if spec.runs[g[0]].label == "rebel-exact"]
    assert sorted(len(g) for g in exact) == [3, 3, 3, 3] and all(len({p.problem for p in g}) == 1 for g in exact)
    assert batch_groups(spec, batch=False) == [[i] for i in range(len(spec.runs))]


def stacked_and_alone(spec):
    """(plan, its member's result in the stack, its run alone) for every run of a stack of ``spec``'s groups."""
    for g in batch_groups(spec):
        plans = [spec.runs[i] for i in g]
        if len(plans) > 1:
            problems = [spec.problems[p.problem] for p in plans]
            for s, batched in enumerate(run_batch(plans, problems)):
                yield plans[s], batched, run_one(plans[s], problems[s])


def test_stacked_runs_equal_runs_alone_bit_for_bit(spec, monkeypatch):
    import testbed.algorithms.dpo as dpo

    fast, real = [], dpo.online_pairs

    def counted(*a, **kw):  # the stacked draw path is taken (not only its seed-by-seed fallback)
        out = real(*a, **kw)
        fast.append(out is not None)
        return out

    monkeypatch.setattr(dpo, "online_pairs", counted)
    for plan, (rows, policy, _), (alone_rows, alone_policy, _) in stacked_and_alone(spec):
        assert rows == alone_rows, plan.run_id  # every metric, loss, samples, queries: exactly equal
        assert np.array_equal(policy.params, alone_policy.params)
    assert fast and all(fast)  # online DPO's stacks and single runs drew through the one-array path


def test_batched_and_per_seed_run_folders_are_byte_identical(spec, tmp_path):
    a = run_spec(spec, tmp_path / "batched", progress=False)
    b = run_spec(spec, tmp_path / "per-seed", progress=False, batch=False)
    for name in ("metrics.csv", "policies.npz", "config.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_stack_split_differently_gives_the_same_runs(spec):
    g = next(g for g in batch_groups(spec) if spec.runs[g[0]].label.startswith("npg") and
             spec.runs[g[0]].config.get("mode") == "sampled")
    plans = [spec.runs[i] for i in g]
    problems = [spec.problems[p.problem] for p in plans]
    whole = run_batch(plans, problems)
    halves = run_batch(plans[:2], problems[:2]) + run_batch(plans[2:], problems[2:])
    for (r1, p1, _), (r2, p2, _) in zip(whole, halves):
        assert r1 == r2 and np.array_equal(p1.params, p2.params)


def test_stacked_metrics_and_least_squares_match_member_by_member():
    """The building blocks on their own, against independent unstacked calls, with random data."""
    rng = np.random.default_rng(7)
    probs = [make_tabular(contexts=6, actions=5, seed=s) for s in range(4)]
    batch = ProblemBatch(probs)
    pols = [TabularSoftmax(rng.normal(size=(6, 5)) * 3) for _ in probs]
    st = stack(pols)
    for beta in (0.0, 0.3):
        arrays = bandit_metric_arrays(batch, st.log_probs(), beta)
        for s, (p, pol) in enumerate(zip(probs, pols)):
            alone = bandit_metrics(p, pol, beta)
            assert all((alone[k] is None and arrays[k] is None) or alone[k] == arrays[k][s] for k in alone)
            # and against the problem's own exact methods (independent formulas), to rounding
            assert alone["reward"] == pytest.approx(p.value(pol.probs()), rel=1e-12)
            assert alone["kl_ref"] == pytest.approx(p.kl_ref(pol.probs()), rel=1e-9, abs=1e-12)
    x = rng.integers(6, size=(4, 50))
    y = rng.integers(5, size=(4, 50))
    rows = np.eye(5)[y] - np.eye(5)[rng.integers(5, size=(4, 50))]
    t = rng.normal(size=(4, 50))
    for kw in ({}, {"context_intercept": True}, {"ridge": 0.1}):
        new, fitted = lstsq_step(st, x, rows, t, **kw)
        for s, pol in enumerate(pols):
            new_s, fitted_s = lstsq_step(pol, x[s], rows[s], t[s], **kw)
            assert np.array_equal(member(new, s).params, new_s.params) and np.array_equal(fitted[s], fitted_s)
    lin = [make_linear(contexts=4, actions=5, dim=3, seed=s) for s in range(3)]
    lpols = [LogLinear(p.features, rng.normal(size=3)) for p in lin]
    lst = stack(lpols)
    xl = rng.integers(4, size=(3, 40))
    rows = rng.normal(size=(3, 40, 3))
    t = rng.normal(size=(3, 40))
    for kw in ({}, {"ridge": 0.5}):
        new, fitted = lstsq_step(lst, xl, rows, t, **kw)
        for s, pol in enumerate(lpols):
            new_s, fitted_s = lstsq_step(pol, xl[s], rows[s], t[s], **kw)
            assert np.array_equal(member(new, s).params, new_s.params) and np.array_equal(fitted[s], fitted_s)
            # the minimum-norm least-squares solution, by an independent solver
            ref = np.linalg.lstsq(rows[s], t[s], rcond=None)[0] if not kw else None
            if ref is not None:
                np.testing.assert_allclose(new_s.params - pol.params, ref, rtol=1e-10, atol=1e-12)


def test_what_is_batchable():
    rebel, npg = ALGORITHMS["rebel"], ALGORITHMS["npg"]
    cfg = lambda cls, **kw: build_config(cls.Config, kw, "t")  # noqa: E731
    assert rebel.batchable(cfg(rebel, mode="exact"), "tabular")
    assert rebel.batchable(cfg(rebel, mode="sampled"), "loglinear")
    assert rebel.batchable(cfg(rebel, mode="sampled", solver="adam"), "tabular")
    assert not rebel.batchable(cfg(rebel, mode="exact", y_prime="offline"), "tabular")
    assert not rebel.batchable(cfg(rebel, mode="sampled", solver="adam"), "mlp")
    assert npg.batchable(cfg(npg, mode="sampled"), "tabular")
    ppo, dpo = ALGORITHMS["ppo"], ALGORITHMS["dpo"]
    assert ppo.batchable(cfg(ppo), "loglinear") and not ppo.batchable(cfg(ppo, critic="mlp"), "tabular")
    assert dpo.batchable(cfg(dpo, mode="offline"), "tabular") and not dpo.batchable(cfg(dpo, mode="population"), "tabular")


def test_a_nan_in_one_member_of_a_stack_names_that_run(spec, monkeypatch):
    from testbed.algorithms import REBEL
    from testbed.training import NumericalError

    g = next(g for g in batch_groups(spec) if spec.runs[g[0]].label == "rebel-sampled")
    plans = [spec.runs[i] for i in g]
    real = REBEL.update

    def broken(self, policy, rng):
        step = real(self, policy, rng)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            step.policy.params[4] = np.nan  # member 4 only
        return step

    monkeypatch.setattr(REBEL, "update", broken)
    expected = f"run {plans[4].run_id}: the policy parameters became nan at iteration 3"
    with pytest.raises(NumericalError, match=re.escape(expected)):
        run_batch(plans, [spec.problems[p.problem] for p in plans])


# Fewer draws than contexts (and minibatches smaller than the context count): the per-sample paths of the
# sampled draws and of the minibatch log-probabilities, next to the whole-table ones the spec above takes;
# a context distribution with zeros. Every member must still be its run alone, bit for bit.
FEW = {
    "rebel-lstsq-few": ("rebel", {"mode": "sampled", "pairs": 12}),
    "rebel-ref-few": ("rebel", {"mode": "sampled", "pairs": 12, "y_prime": "ref", "beta": 0.1}),
    "rebel-adam-few": ("rebel", {"mode": "sampled", "solver": "adam", "pairs": 40, "epochs": 2, "minibatch": 8}),
    "ppo-few": ("ppo", {"batch": 40, "epochs": 2, "minibatch": 8}),
    "dpo-few": ("dpo", {"mode": "online", "pairs": 12, "epochs": 2, "minibatch": 4}),
}


@pytest.mark.parametrize("label", sorted(FEW))
def test_stacks_with_fewer_draws_than_contexts_equal_runs_alone(label):
    from testbed.experiments.spec import RunPlan

    name, cfg = FEW[label]
    rho = np.r_[np.zeros(3), np.full(27, 1 / 27)]
    problems = [TabularBandit(b.rewards, rho=rho, pi_ref=b.pi_ref, name=b.name)
                for b in (make_tabular(contexts=30, actions=4, seed=s) for s in range(3))]
    plans = [RunPlan(f"{label}-s{s}", p.name, name, label, name, cfg, {}, None, s, 4, 2)
             for s, p in enumerate(problems)]
    for s, (rows, policy, _) in enumerate(run_batch(plans, problems)):
        alone_rows, alone_policy, _ = run_one(plans[s], problems[s])
        assert rows == alone_rows and np.array_equal(policy.params, alone_policy.params), plans[s].run_id


def test_contexts_from_uniforms_on_a_stack_are_each_problems_draws():
    from testbed.algorithms.stacked_draws import contexts_from_uniforms as _contexts

    rng = np.random.default_rng(2)
    rhos = np.array([[0.5, 0.0, 0.25, 0.25], [1e-12, 0.3, 0.0, 0.7 - 1e-12], [0.0, 0.0, 0.0, 1.0]])
    u = rng.random((3, 500))
    stacked = _contexts(rhos, u)
    for s, rho in enumerate(rhos):
        problem = TabularBandit(np.zeros((4, 2)), rho=rho)
        a, b = np.random.default_rng(s), np.random.default_rng(s)
        assert np.array_equal(problem.sample_contexts(a, 500), _contexts(rho, b.random(500)))
        assert np.array_equal(stacked[s], _contexts(rho, u[s]))
        assert not np.any(rho[stacked[s]] == 0)  # a context of probability zero is never drawn


@pytest.mark.parametrize("law", ["distinct", "independent"])
@pytest.mark.parametrize("labels", ["bt", "deterministic"])
@pytest.mark.parametrize("n", [5, 20, 300])
def test_online_pairs_of_a_stack_are_each_seeds_own_draws(law, labels, n):
    # the stacked draw (one uniform call per seed, the rest on the stack) against DPO's seed-by-seed round;
    # a near-deterministic policy row makes sample_distinct's "nothing left" branch happen; n pairs: fewer than
    # the 7 contexts (rows gathered per draw), fewer than the 28 (context, response) rows (y from the table,
    # y' from rows per draw), more (both from tables)
    from testbed.algorithms.stacked_draws import online_pairs
    from testbed.datasets import sample_distinct

    cls = ALGORITHMS["dpo"]
    cfg = build_config(cls.Config, {"mode": "online", "pairs": n, "pair_law": law, "labels": labels}, "t")
    problems = [make_tabular(contexts=7, actions=4, seed=s) for s in range(3)]
    batch = ProblemBatch(problems)
    logits = np.random.default_rng(0).normal(size=(3, 7, 4)) * 2
    logits[:, 0] = [800.0, 0.0, 0.0, 0.0]  # pi(.|x=0) puts all its mass on y = 0 (to rounding)
    pols = [TabularSoftmax(z) for z in logits]
    algo = cls(cfg, batch, [np.random.default_rng(s) for s in range(3)])
    stacked = online_pairs(stack(pols), [np.random.default_rng(s) for s in range(3)], batch, algo.oracles, n, law,
                           sample_distinct)
    for s, (p, pol) in enumerate(zip(problems, pols)):
        alone = cls(cfg, p, np.random.default_rng(s))
        want = alone._pairs(pol, np.random.default_rng(s), p)
        single = online_pairs(pol, np.random.default_rng(s), p, [alone.oracle], n, law, sample_distinct)
        for w, a, b in zip(want, single, stacked):
            assert np.array_equal(w, a) and np.array_equal(w, b[s])
        if law == "distinct":
            assert np.all(want[1] != want[2])  # y' != y in every pair, the degenerate context included
