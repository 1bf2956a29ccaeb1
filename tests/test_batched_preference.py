"""Batched seeds on preference problems (the preference half of tests/test_batched.py): a stack of S runs of a
preference algorithm updated as one array computation gives every run bit for bit its rows, final policy
and average iterate alone."""

import numpy as np
import pytest
import yaml

from testbed.algorithms import ALGORITHMS, build_config
from testbed.experiments.runner import batch_groups, run_batch, run_one, run_spec
from testbed.experiments.spec import RunPlan, parse_spec
from testbed.metrics import preference_metric_arrays, preference_metrics
from testbed.policies import TabularSoftmax, stack
from testbed.problems import PreferenceBandit, PreferenceBatch, make_preference
from tests.test_batched import stacked_and_alone

# Two preference instances of one shape (random raters, intransitive; random skew-symmetric with a
# non-uniform pi_ref); every preference algorithm, in each of its modes: exact and sampled REBEL-preference
# (pair and self-play targets, y' from pi_t or uniform, Bernoulli or probability oracle), Hedge, optimistic
# Hedge, Nash-MD (both schedules and anchors), exact and sampled SPPO, the reward-model pipeline (population
# and sampled reward models, exact and sampled REBEL), and DPO/IPO on preference labels online and offline.
SPEC = """
name: batched-pref
problems:
  - {kind: preference, family: raters, contexts: 4, actions: 3, raters: 3, seed: 0}
  - {kind: preference, family: skew, contexts: 4, actions: 3, seed: 1, pi_ref: [0.5, 0.3, 0.2]}
algorithms:
  - {name: hedge, eta: 0.5}
  - {name: optimistic_hedge, eta: 0.5}
  - {name: nash_md, tau: 0.1}
  - {name: nash_md, tau: 0.1, eta: 2, schedule: constant, mu: uniform, label: nash_md-constant}
  - {name: rebel_pref, mode: exact, eta: 0.5}
  - {name: rebel_pref, mode: exact, eta: 0.5, target: self_play, y_prime: uniform, label: rebel_pref-self-uniform}
  - {name: rebel_pref, mode: sampled, pairs: 30, eta: 0.5}
  - {name: rebel_pref, mode: sampled, pairs: 30, eta: 0.5, y_prime: uniform, oracle: probability, label: rebel_pref-u-p}
  - {name: rebel_pref, mode: sampled, pairs: 3, eta: 0.5, target: self_play, opponents: 2, label: rebel_pref-self-few}
  - {name: rebel_pref, mode: sampled, pairs: 20, target: self_play, y_prime: uniform, oracle: probability,
     opponents: 3, label: rebel_pref-self-u-p}
  - {name: sppo, mode: exact}
  - {name: sppo, mode: sampled, samples: 30, opponents: 2, epochs: 2, minibatch: 8}
  - {name: sppo, mode: sampled, samples: 3, opponents: 2, oracle: probability, epochs: 1, minibatch: 2,
     label: sppo-few-p}
  - {name: bt_rebel, eta: 0.5}
  - {name: bt_rebel, eta: 0.5, beta: 0.1, mode: sampled, pairs: 30, reward_model: sampled, dataset: 60,
     label: bt_rebel-sampled}
  - {name: dpo, labels: preference, mode: online, pairs: 20, epochs: 2, minibatch: 8, label: dpo_pref-online}
  - {name: dpo, labels: preference, mode: offline, pairs: 40, minibatch: 16, loss: ipo, pair_law: independent,
     label: ipo_pref-offline}
  - {name: dpo, labels: preference, mode: population, pair_law: independent, optimizer: gd, label: dpo_pref-pop}
seeds: [0, 1, 2]
iterations: 6
eval_every: 2
"""


@pytest.fixture(scope="module")
def spec():
    return parse_spec(yaml.safe_load(SPEC), "batched-pref")


def test_every_preference_mode_but_population_dpo_stacks_seeds_and_instances(spec):
    groups = batch_groups(spec)
    stacked = {spec.runs[g[0]].label for g in groups if len(g) > 1}
    alone = {spec.runs[g[0]].label for g in groups if len(g) == 1}
    assert alone == {"dpo_pref-pop"} and len(stacked) == len({p.label for p in spec.runs}) - 1
    assert sorted(len(g) for g in groups) == [1] * 6 + [6] * (len({p.label for p in spec.runs}) - 1)
    alone_names = [n for n, c in ALGORITHMS.items() if c.problem_kind == "preference"
                   and not c.batchable(build_config(c.Config, {}, n), "tabular")]
    assert alone_names == []


def test_stacked_preference_runs_equal_runs_alone_bit_for_bit(spec):
    for plan, (rows, policy, extra), (alone_rows, alone_policy, alone_extra) in stacked_and_alone(spec):
        assert rows == alone_rows, plan.run_id  # metrics (exploitability of both iterates), loss, counts
        assert np.array_equal(policy.params, alone_policy.params), plan.run_id
        assert np.array_equal(extra["avg_probs"], alone_extra["avg_probs"]), plan.run_id
        assert rows[-1]["exploitability_avg"] is not None and rows[0]["exploitability_avg"] is None


def test_online_dpo_on_a_preference_stack_draws_in_one_array_computation(spec):
    from testbed.algorithms.stacked_draws import online_pairs
    from testbed.datasets import sample_distinct

    problems = list(spec.problems.values())
    batch = PreferenceBatch(problems)
    cls = ALGORITHMS["dpo"]
    algo = cls(build_config(cls.Config, {"labels": "preference", "mode": "online", "pairs": 50}, "t"), batch,
               [np.random.default_rng(s) for s in range(2)])
    pols = [TabularSoftmax(p.log_pi_ref) for p in problems]
    stacked = online_pairs(stack(pols), [np.random.default_rng(s) for s in range(2)], batch, algo.oracles, 50,
                           "distinct", sample_distinct)
    assert stacked is not None  # the stacked path, not the seed-by-seed fallback
    for s, (p, pol) in enumerate(zip(problems, pols)):
        alone = cls(algo.config, p, np.random.default_rng(s))
        want = alone._pairs(pol, np.random.default_rng(s), p)  # problem.sample_contexts, policy.sample, the oracle
        assert all(np.array_equal(w, b[s]) for w, b in zip(want, stacked))


def test_batched_and_per_seed_preference_run_folders_are_byte_identical(spec, tmp_path):
    a = run_spec(spec, tmp_path / "batched", progress=False)
    b = run_spec(spec, tmp_path / "per-seed", progress=False, batch=False)
    for name in ("metrics.csv", "policies.npz", "config.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_sampled_draws_are_the_problems_and_policys_own_draws():
    """The single-seed draw of sampled REBEL-preference is problem.sample_contexts, policy.sample (twice) and
    problem.sample_preferences, called in that order on one generator (the pre-stacking code path)."""
    p = make_preference("raters", contexts=5, actions=4, raters=3, seed=2)
    policy = TabularSoftmax(np.random.default_rng(0).normal(size=(5, 4)))
    cls = ALGORITHMS["rebel_pref"]
    algo = cls(build_config(cls.Config, {"mode": "sampled", "pairs": 200, "eta": 0.5}, "t"), p, None)
    step = algo.update(policy, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    x = p.sample_contexts(rng, 200)
    y, y2 = policy.sample(rng, x), policy.sample(rng, x)
    t = p.sample_preferences(rng, x, y, y2) - 0.5
    from testbed.policies import PairRows, lstsq_step

    want, _ = lstsq_step(policy, x, PairRows(y, y2, 4), 0.5 * t)
    assert np.array_equal(step.policy.params, want.params)


def test_stacked_preference_metrics_match_member_by_member_and_closed_forms():
    rng = np.random.default_rng(5)
    probs = [make_preference("skew", contexts=6, actions=4, seed=s) for s in range(3)]
    probs = [PreferenceBandit(p.preferences, rho=rng.dirichlet(np.ones(6)), name=p.name) for p in probs]
    batch = PreferenceBatch(probs)
    pols = [TabularSoftmax(rng.normal(size=(6, 4)) * 2) for _ in probs]
    avg = rng.dirichlet(np.ones(4), size=(3, 6))
    arrays = preference_metric_arrays(batch, stack(pols).log_probs(), avg)
    for s, (p, pol) in enumerate(zip(probs, pols)):
        alone = preference_metrics(p, pol, avg[s])
        assert all((alone[k] is None and arrays[k] is None) or alone[k] == arrays[k][s] for k in alone)
        pi = pol.probs()
        # the closed forms, by independent loops: max_y sum_y' P(y ≻ y')·pi(y') − ½ and the KL, under rho
        expl = sum(p.rho[x] * (max(p.preferences[x, y] @ pi[x] for y in range(4)) - 0.5) for x in range(6))
        kl = sum(p.rho[x] * pi[x, y] * np.log(pi[x, y] / p.pi_ref[x, y]) for x in range(6) for y in range(4))
        assert alone["exploitability"] == pytest.approx(expl, rel=1e-12, abs=1e-15)
        assert alone["kl_ref"] == pytest.approx(kl, rel=1e-10, abs=1e-15)


def test_sampled_preference_stacks_on_few_draws_and_rho_with_zeros_equal_runs_alone():
    rho = np.r_[0.0, np.full(5, 0.2)]
    problems = [PreferenceBandit(make_preference("raters", contexts=6, actions=3, seed=s).preferences, rho=rho,
                                 name=f"r{s}") for s in range(3)]
    for name, cfg in (("rebel_pref", {"mode": "sampled", "pairs": 4}), ("sppo", {"mode": "sampled", "samples": 4,
                                                                                  "minibatch": 3})):
        plans = [RunPlan(f"{name}-s{s}", p.name, name, name, name, cfg, {}, None, s, 4, 2)
                 for s, p in enumerate(problems)]
        for s, (rows, policy, extra) in enumerate(run_batch(plans, problems)):
            alone_rows, alone_policy, alone_extra = run_one(plans[s], problems[s])
            assert rows == alone_rows and np.array_equal(policy.params, alone_policy.params), plans[s].run_id
            assert np.array_equal(extra["avg_probs"], alone_extra["avg_probs"]), plans[s].run_id


@pytest.mark.parametrize("label", ["optimistic_hedge-exact", "nash_md-exact", "rebel_pref-self-few", "sppo-sampled",
                                   "bt_rebel-sampled"])
def test_a_resumed_preference_stack_ends_with_the_numbers_of_an_uninterrupted_one(spec, tmp_path, label):
    g = next(g for g in batch_groups(spec) if spec.runs[g[0]].label == label and len(g) > 1)
    plans = [spec.runs[i] for i in g]
    problems = [spec.problems[p.problem] for p in plans]
    whole = run_batch(plans, problems)
    ckpt = tmp_path / "stack.ckpt"
    run_batch(plans, problems, ckpt, every=4)  # leaves the state after update 4 (the optimiser's and Hedge's state too)
    from testbed.training.checkpoint import load_state

    assert load_state(ckpt).t == 4
    resumed = run_batch(plans, problems, ckpt, every=4)
    for (r1, p1, e1), (r2, p2, e2) in zip(whole, resumed):
        assert r1 == r2 and np.array_equal(p1.params, p2.params) and np.array_equal(e1["avg_probs"], e2["avg_probs"])


@pytest.mark.parametrize("kind", ["reward", "preference"])
def test_a_stack_refuses_the_per_problem_methods_and_its_members_answer(kind, tmp_path):
    """The methods that would read a stack's arrays as one problem's (draws, scalar values, minimax winners,
    files) refuse on a batch in one line naming .members[s], and a refused save writes nothing; the members
    give their own answers (J of the uniform policy: the mean reward under rho; the minimax winner:
    exploitability 0, which the stack computes member by member)."""
    from testbed.problems import ProblemBatch, make_tabular

    rng, save = np.random.default_rng(0), str(tmp_path / "p.npz")
    if kind == "reward":
        members = [make_tabular(contexts=3, actions=4, seed=s) for s in range(2)]
        batch = ProblemBatch(members)
        calls = {"value": (np.full((3, 4), 0.25),), "optimal_policy": (), "sample_contexts": (rng, 5), "save": (save,)}
    else:
        members = [make_preference("raters", contexts=3, actions=4, raters=3, seed=s) for s in range(2)]
        batch = PreferenceBatch(members)
        calls = {"minimax_winner": (), "condorcet_winners": (), "sample_contexts": (rng, 5), "save": (save,)}
    for name, args in calls.items():
        with pytest.raises(TypeError, match=rf"{type(batch).__name__}\.{name}\(\) is per problem.*\.members\[s\]"):
            getattr(batch, name)(*args)
    assert not (tmp_path / "p.npz").exists()
    if kind == "reward":
        for m in members:
            assert m.value(np.full((3, 4), 0.25)) == pytest.approx(m.rho @ m.rewards.mean(axis=1), abs=1e-15)
    else:
        winners = np.stack([m.minimax_winner() for m in members])
        np.testing.assert_allclose(batch.exploitability(winners), 0.0, atol=1e-9)
