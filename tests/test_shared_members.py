"""Seeds that are one computation: a configuration that draws no random numbers (``Algorithm.draws`` False) on a
shared problem runs once in a stack, and every seed gets its own rows (tests/test_batched*.py check those rows
against runs alone, bit for bit). Here: each declaration is exact (the generator is used iff draws says so, for
every mode of both batched test specs), a stack computes one member per distinct problem, and a configuration
that wrongly claims to draw nothing is caught."""

import numpy as np
import pytest
import yaml

from testbed.algorithms import ALGORITHMS, build_config
from testbed.experiments import runner
from testbed.experiments.runner import batch_groups, generator_used, run_batch, run_one, shared_members
from testbed.experiments.spec import RunPlan, parse_spec
from testbed.policies import default_kind, initial_policy
from testbed.problems import make_linear, make_preference, make_tabular
from testbed.training.checkpoint import load_state
from tests import test_batched, test_batched_preference


def _specs():
    return [parse_spec(yaml.safe_load(m.SPEC), m.__name__) for m in (test_batched, test_batched_preference)]


def _configurations():
    """(label, algorithm class, config, problem) of every configuration of the two batched test specs, on each of
    their problems."""
    seen = {}
    for spec in _specs():
        for plan in spec.runs:
            cls = ALGORITHMS[plan.algorithm]
            seen.setdefault((plan.label, plan.problem),
                            (plan.label, cls, build_config(cls.Config, plan.config, plan.label),
                             spec.problems[plan.problem]))
    dpo = ALGORITHMS["dpo"]
    tabular = make_tabular(contexts=4, actions=3, seed=0)
    for cfg in ({"mode": "population", "optimizer": "adam", "epochs": 2}, {"mode": "population", "optimizer": "gd"}):
        seen[str(cfg)] = (f"dpo-{cfg['optimizer']}", dpo, build_config(dpo.Config, cfg, "dpo"), tabular)
    return list(seen.values())


@pytest.mark.parametrize("label, cls, cfg, problem", _configurations(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_configuration_uses_its_generator_exactly_when_draws_says_so(label, cls, cfg, problem):
    rng = np.random.default_rng(3)
    policy = initial_policy(problem, default_kind(problem), rng=np.random.default_rng(4))
    algo = cls(cfg, problem, rng)
    for _ in range(3):
        policy = algo.update(policy, rng).policy
    assert generator_used(rng, 3) == cls.draws(cfg), label  # the runner's own test of a shared run


def test_a_stack_computes_one_member_per_distinct_problem_and_gives_each_seed_its_run(monkeypatch):
    problems = [make_preference("raters", contexts=5, actions=4, raters=3, seed=s) for s in range(2)]
    order = [problems[i] for i in (0, 1, 0, 0, 1)]
    sizes = []
    real = ALGORITHMS["hedge"].update

    def counted(self, policy, rng):
        sizes.append(policy.params.shape[0])
        return real(self, policy, rng)

    monkeypatch.setattr(ALGORITHMS["hedge"], "update", counted)
    plans = [RunPlan(f"h-s{s}", p.name, "hedge", "hedge", "hedge", {"eta": 0.3}, {}, None, s, 5, 2)
             for s, p in enumerate(order)]
    cls = ALGORITHMS["hedge"]
    assert shared_members(cls, build_config(cls.Config, {"eta": 0.3}, "hedge"), order) == ([0, 1, 0, 0, 1], [0, 1])
    stacked = run_batch(plans, order)
    assert sizes == [2] * 5  # two members, five updates
    for plan, problem, (rows, policy, extra) in zip(plans, order, stacked):
        alone_rows, alone_policy, alone_extra = run_one(plan, problem)
        assert rows == alone_rows and [r["run_id"] for r in rows] == [plan.run_id] * 4  # iterations 0, 2, 4, 5
        assert np.array_equal(policy.params, alone_policy.params)
        assert np.array_equal(extra["avg_probs"], alone_extra["avg_probs"])
    sampled = ALGORITHMS["rebel_pref"]
    cfg = build_config(sampled.Config, {"mode": "sampled", "pairs": 5}, "rebel_pref")
    assert shared_members(sampled, cfg, order) == ([0, 1, 2, 3, 4],) * 2  # seeds that draw: a member each


def test_the_generator_check_sees_draws_and_spawns_and_nothing_else():
    for use in (lambda g: g.random(), lambda g: g.integers(5), lambda g: g.spawn(1), lambda g: g.permutation(3)):
        g = np.random.default_rng(8)
        use(g)
        assert generator_used(g, 8)
    assert not generator_used(np.random.default_rng(8), 8) and generator_used(np.random.default_rng(8), 9)


def test_a_configuration_that_claims_to_draw_nothing_but_draws_is_refused(monkeypatch):
    problem = make_tabular(contexts=3, actions=4, seed=0)
    monkeypatch.setattr(ALGORITHMS["rebel"], "draws", staticmethod(lambda config: False))
    plans = [RunPlan(f"r-s{s}", problem.name, "rebel", "rebel", "rebel", {"mode": "sampled", "pairs": 6}, {}, None, s,
                     2, 2) for s in range(3)]
    with pytest.raises(RuntimeError, match=r"REBEL\.draws says 'rebel' takes no random numbers.*used its generator"):
        run_batch(plans, [problem] * 3)


def test_split_stacks_keep_the_seeds_of_one_computation_together():
    spec = _specs()[1]
    for jobs in (2, 3, 8):
        for g in batch_groups(spec, jobs=jobs):
            plans = [spec.runs[i] for i in g]
            cls = ALGORITHMS[plans[0].algorithm]
            cfg = build_config(cls.Config, plans[0].config, plans[0].label)
            if cls.batchable(cfg, "tabular") and not cls.draws(cfg):
                problems = {p.problem for p in plans}
                whole = [p for p in spec.runs if p.label == plans[0].label and p.problem in problems]
                assert len(whole) == len(plans), (jobs, plans[0].label)  # every seed of its problems is here
    assert runner.batch_groups(spec, batch=False) == [[i] for i in range(len(spec.runs))]


def test_a_checkpoint_with_a_member_per_seed_is_started_again_and_ends_as_an_uninterrupted_run(monkeypatch, tmp_path):
    """A stack checkpointed by the code before shared members holds a member per seed; resumed by the shared layout
    it was read as one member per problem (a false 'used its generator' on [A, A, B], a broadcast error on a
    log-linear loss). It is now dropped and the stack runs again: the same rows as an uninterrupted run."""
    pref = [make_preference("raters", contexts=4, actions=3, raters=3, seed=s) for s in range(2)]
    linear = make_linear(contexts=4, actions=3, dim=2, seed=0)
    for name, cfg, problems in (("hedge", {"eta": 0.5}, [pref[0], pref[0], pref[1]]),
                                ("rebel", {"mode": "exact", "eta": 1.0}, [linear] * 3)):
        plans = [RunPlan(f"{name}-s{s}", p.name, name, name, name, cfg, {}, None, s, 6, 2) for s, p in enumerate(problems)]
        whole = run_batch(plans, problems)
        ckpt = tmp_path / f"{name}.ckpt"
        with monkeypatch.context() as m:  # the old layout: every seed its own member
            m.setattr(runner, "shared_members", lambda cls, cfg, problems: (list(range(len(problems))),) * 2)
            run_batch(plans, problems, ckpt, every=4)
        assert len(load_state(ckpt).rngs) == 3 and load_state(ckpt).t == 4
        resumed = run_batch(plans, problems, ckpt, every=4)
        for (r1, p1, _), (r2, p2, _) in zip(whole, resumed):
            assert r1 == r2 and np.array_equal(p1.params, p2.params), name
