"""The claims table (testbed/experiments/claims.py), the tuning protocol (testbed/experiments/tuning.py)
and the aggregate estimators (testbed/plotting/aggregate.py)."""

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed.errors import InputError
from testbed.experiments import claims, tuning
from testbed.experiments.spec import parse_spec
from testbed.plotting import aggregate
from testbed.results import COLUMNS, read_metrics

ROOT = Path(__file__).resolve().parents[1]


# ----- the verdict rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi,region,expected", [
    (0.6, 0.7, (0.5, 1.0), claims.SUPPORTED),
    (0.5, 0.5, (0.5, 1.0), claims.SUPPORTED),  # closed region: the boundary belongs to it
    (0.2, 0.4, (0.5, 1.0), claims.NOT_SUPPORTED),
    (0.4, 0.6, (0.5, 1.0), claims.INCONCLUSIVE),
    (-3.0, -1.0, (-claims.INF, -0.4), claims.SUPPORTED),
    (-0.3, 0.2, (-claims.INF, -0.4), claims.NOT_SUPPORTED),
    (float("nan"), float("nan"), (0.0, 1.0), claims.INCONCLUSIVE),  # one seed: no interval
    (0.3, 0.49999999999999994, (0.5, 1.0), claims.NOT_SUPPORTED),  # compared exactly: no rounding tolerance
    (0.3, 0.4999999, (0.5, 1.0), claims.NOT_SUPPORTED),
])
def test_verdict_rule(lo, hi, region, expected):
    assert claims.verdict(lo, hi, region) == expected


@pytest.mark.parametrize("bands,expected", [
    (((0.28, 0.3), (0.49, 0.495)), claims.NOT_SUPPORTED),  # ½ outside both Monte-Carlo bands: the interval decides
    (((0.28, 0.3), (0.49, 0.5)), claims.INCONCLUSIVE),     # ½ within the upper end's Monte-Carlo error
    (((0.28, 0.3), (0.49, 0.51)), claims.INCONCLUSIVE),
])
def test_a_boundary_within_monte_carlo_error_is_inconclusive(bands, expected):
    assert claims.verdict(0.29, 0.4925, (0.5, 1.0), bands) == expected
    # every resample on the closed region's boundary (P = 1 in all of them): inside, no side in doubt
    assert claims.verdict(1.0, 1.0, (0.5, 1.0), ((1.0, 1.0), (1.0, 1.0))) == claims.SUPPORTED


# compare_tuned's final scores, REBEL (sampled) and PPO, as ranks within each problem in seed order (the
# probability of improvement depends on the order alone): P = 0.3875, and with 2000 resamples at bootstrap seed
# 0 the upper end was 0.49999999999999994 (read as ½: inconclusive) while 19 seeds of 20 gave 0.4875-0.4975.
CLAIM6_RANKS = {"rebel-sampled": [[2, 4, 0, 6, 3, 5, 19, 1, 7, 8], [10, 13, 14, 15, 12, 16, 11, 17, 9, 18],
                                  [6, 12, 16, 4, 18, 11, 1, 9, 7, 17], [15, 11, 8, 17, 18, 13, 10, 14, 12, 16]],
                "ppo": [[11, 10, 17, 9, 14, 16, 15, 18, 13, 12], [3, 7, 6, 8, 2, 5, 0, 19, 4, 1],
                        [5, 15, 13, 3, 2, 10, 0, 19, 14, 8], [2, 3, 19, 4, 9, 6, 7, 5, 1, 0]]}


def test_claim_6_verdict_does_not_hang_on_the_bootstrap_seed(tmp_path):
    """The ideal (B = ∞) upper end is below ½ (P(resample ≥ ½) ≈ 0.0205 < 0.025): every bootstrap seed must
    say *not supported*; the 2000-resample end at seed 0 is within Monte-Carlo error of ½, so more are drawn."""
    finals = {m: {f"p{j}": [(r + 1) / 100 for r in ranks] for j, ranks in enumerate(by_problem)}
              for m, by_problem in CLAIM6_RANKS.items()}
    _write_run_folder(tmp_path / "compare_tuned", finals, list(range(10)))
    c = claims.bandit_vs("ppo")(tmp_path)
    assert c.value[0] == 0.3875 and c.verdict == claims.NOT_SUPPORTED, (c.value, c.bands)
    assert "bootstrap resamples" in c.note and c.value[2] < 0.5
    scores, _ = aggregate.score_matrices(tmp_path / "compare_tuned")
    agg = aggregate.aggregates(tmp_path / "compare_tuned")  # the aggregate table's interval is the claim's
    assert agg["poi"][("rebel-sampled", "ppo")] == pytest.approx(c.value, rel=1e-12, abs=1e-15)
    for (a, b), (p, lo, hi) in agg["poi"].items():  # a pair's two cells are complements, as the statistic is
        q, qlo, qhi = agg["poi"][(b, a)]
        assert (p, lo, hi) == pytest.approx((1 - q, 1 - qhi, 1 - qlo), abs=1e-15)
        assert p == pytest.approx(aggregate.probability_of_improvement(scores[a], scores[b]), abs=1e-15)
    for seed in range(8):
        iv = aggregate.poi_bootstrap(scores["rebel-sampled"], scores["ppo"], (0.5, 1.0), seed=seed)
        assert claims.verdict(iv.low, iv.high, (0.5, 1.0), iv.bands) == claims.NOT_SUPPORTED, (seed, iv)


def test_a_probability_of_improvement_interval_does_not_depend_on_the_order_of_the_pair():
    """(y, x) is bootstrapped from the same resamples as (x, y): its interval is the mirror, and with a region the
    resamples doubled are the same (the region mirrored); before, swapping the arguments paired other resamples."""
    x, y = (np.array(CLAIM6_RANKS[m], dtype=float).T for m in ("rebel-sampled", "ppo"))
    for region in (None, (0.5, 1.0), (0.5, 0.5)):
        a = aggregate.poi_bootstrap(x, y, region)
        b = aggregate.poi_bootstrap(y, x, None if region is None else (1 - region[1], 1 - region[0]))
        assert a.reps == b.reps and (a.point, a.low, a.high) == pytest.approx((1 - b.point, 1 - b.high, 1 - b.low),
                                                                              abs=1e-15)
    assert aggregate.poi_bootstrap(x, y, (0.5, 1.0)).reps > aggregate.REPS  # claim 6's data: ½ was within error


def test_the_probability_of_improvement_is_exact_at_one_half():
    """One ratio of integer counts, rounded once: the 2000-resample upper end of claim 6 at seed 0 is a resample
    worth exactly ½ (the mean over problems of per-problem fractions gave 0.49999999999999994)."""
    x, y = (np.array(CLAIM6_RANKS[m], dtype=float).T for m in ("rebel-sampled", "ppo"))
    assert aggregate.poi_bootstrap(x, y).high == 0.5  # 2000 resamples, no region: no more drawn
    assert aggregate.probability_of_improvement(x, y) == 0.3875


def test_monte_carlo_band_brackets_the_ideal_quantile():
    """The band of a percentile end holds the quantile of the distribution the resamples are drawn from."""
    def draw(rng, k):
        return rng.standard_normal(k)
    q = 1.959963984540054
    hits = sum(iv.bands[1][0] <= q <= iv.bands[1][1] and iv.bands[0][0] <= -q <= iv.bands[0][1]
               for iv in (aggregate.bootstrap_interval(0.0, draw, seed=s) for s in range(40)))
    assert hits >= 38
    iv = aggregate.bootstrap_interval(0.0, draw, (q, np.inf), seed=0)
    assert iv.reps > aggregate.REPS  # the boundary was inside the 2000-resample band: doubled
    assert iv.reps <= aggregate.MAX_REPS


def _write_run_folder(d: Path, finals: dict[str, dict[str, list[float]]], seeds: list[int], gap0: float = 1.0,
                      kl: dict[str, float] | None = None) -> Path:
    """A synthetic run folder: label → problem → final sub-optimality per seed (start gap0, two rows a run)."""
    d.mkdir(parents=True)
    runs, lines = [], [",".join(COLUMNS)]
    for label, by_problem in finals.items():
        for problem, values in by_problem.items():
            for seed, v in zip(seeds, values):
                run_id = f"{problem}:{label}:s{seed}"
                runs.append({"run_id": run_id, "problem": problem, "algorithm": label.split("-")[0], "label": label,
                             "base_label": label, "seed": seed, "swept": {}, "config": {}})
                for it, sub in ((0, gap0), (10, v)):
                    row = {"run_id": run_id, "problem": problem, "algorithm": label.split("-")[0], "seed": seed,
                           "iteration": it, "suboptimality": sub, "kl_ref": (kl or {}).get(label, 1.0) * it / 10}
                    lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in COLUMNS))
    (d / "config.yaml").write_text(yaml.safe_dump({"name": d.name, "problems": {}, "plot": [], "runs": runs}))
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("rebel,ppo,expected", [
    (0.01, 0.02, claims.SUPPORTED),     # REBEL's runs all end lower than PPO's
    (0.03, 0.02, claims.NOT_SUPPORTED),  # all higher
    (None, None, claims.INCONCLUSIVE),   # the same law for both: P(improvement) = ½ inside the interval
])
def test_the_rule_on_synthetic_results_sets(tmp_path, rebel, ppo, expected):
    rng = np.random.default_rng(0)
    problems = ["p1", "p2", "p3"]
    if rebel is None:  # both draw from one distribution
        draws = {m: {p: list(rng.uniform(0.01, 0.02, 10)) for p in problems} for m in ("rebel-sampled", "ppo")}
    else:
        draws = {m: {p: list(c * (1 + 0.1 * rng.uniform(size=10))) for p in problems}
                 for m, c in (("rebel-sampled", rebel), ("ppo", ppo))}
    _write_run_folder(tmp_path / "compare_tuned", draws, list(range(10)))
    c = claims.bandit_vs("ppo")(tmp_path)
    assert c.verdict == expected, c.value


def test_kl_claim_reads_the_ratio_of_final_kl(tmp_path):
    finals = {m: {"p": [0.1] * 5} for m in ("rebel-sampled", "ppo")}
    _write_run_folder(tmp_path / "compare_tuned", finals, list(range(5)), kl={"rebel-sampled": 1.5, "ppo": 1.0})
    c = claims.kl_vs_ppo_bandit(tmp_path)
    assert c.value == pytest.approx((1.5, 1.5, 1.5)) and c.verdict == claims.SUPPORTED


def test_a_missing_experiment_is_inconclusive_not_supported(tmp_path):
    table = claims.collect(tmp_path)
    assert len(table) >= 15
    by_models = [c for c in table if c.experiment == "the algorithms' declarations"]
    assert all(c.verdict == claims.INCONCLUSIVE for c in table if c not in by_models)


# ----- tuning -------------------------------------------------------------------------------------------
def test_selection_reads_only_the_tuning_seeds():
    """Tuning seeds favour eta=1; the reporting seeds (planted in the same rows) favour eta=10 by far: the
    pick is eta=1 and its scores do not change whatever the reporting seeds hold."""
    def rows(report_value):
        out = []
        for label, seed in itertools.product(("m(eta=1)", "m(eta=10)"), range(6)):
            tuning_seed = seed >= 3
            final = (0.1 if label == "m(eta=1)" else 0.2) if tuning_seed else report_value[label]
            out += [{"run_id": f"p:{label}:s{seed}", "problem": "p", "seed": seed, "suboptimality": s}
                    for s in (1.0, final)]
        return out
    grids = {"m": ["m(eta=1)", "m(eta=10)"]}
    a = tuning.select(rows({"m(eta=1)": 0.9, "m(eta=10)": 1e-9}), grids, [3, 4, 5])
    b = tuning.select(rows({"m(eta=1)": 1e-9, "m(eta=10)": 0.5}), grids, [3, 4, 5])
    assert a["m"]["label"] == "m(eta=1)" and a == b
    assert a["m"]["scores"] == pytest.approx({"m(eta=1)": 0.1, "m(eta=10)": 0.2})


TINY = {"name": "tiny_tuned", "problems": [{"kind": "tabular", "family": "random", "contexts": 4, "actions": 3, "seed": 0},
                                           {"kind": "tabular", "family": "gap", "contexts": 4, "actions": 3, "seed": 1}],
        "algorithms": [{"name": "rebel", "mode": "exact", "eta": [0.1, 10.0]},
                       {"name": "npg", "mode": "exact", "eta": [0.01, 0.1]}],
        "seeds": 2, "tune": {"seeds": 2}, "iterations": 3}


def test_a_tuned_run_picks_on_tuning_seeds_and_reports_on_fresh_ones(tmp_path):
    """End to end: the tuning folder holds only the tuning seeds, the report only the reporting seeds,
    and the pick is the grid point with the least tuning score (exact updates: the larger eta)."""
    spec = parse_spec(TINY, "tiny.yaml", tmp_path)
    assert spec.tune == {"seeds": [2, 3]}
    out = tuning.run_tuned(spec, tmp_path / "tiny", progress=False)
    assert {r["seed"] for r in read_metrics(tmp_path / "tiny-tuning")} == {2, 3}
    assert {r["seed"] for r in read_metrics(out)} == {0, 1}
    sel = aggregate.read_selection(out)
    assert sel["methods"]["rebel-exact"]["setting"] == {"eta": 10.0}
    assert sel["methods"]["npg-exact"]["setting"] == {"eta": 0.1}
    for m in sel["methods"].values():
        assert m["scores"][m["label"]] == min(m["scores"].values())
    assert {r["label"] for r in yaml.safe_load((out / "config.yaml").read_text())["runs"]} == {"rebel-exact", "npg-exact"}
    table = aggregate.tuned_table(out, tmp_path / "t.md").read_text()
    assert "| rebel-exact | eta = 10.0 |" in table
    again = tuning.run_tuned(spec, tmp_path / "tiny", progress=False)  # reproduce twice into one --runs folder
    assert (again / "metrics.csv").read_bytes() == (out / "metrics.csv").read_bytes()


@pytest.mark.parametrize("change,match", [
    ({"tune": {"seeds": [1, 5]}}, "tune.seeds \\[1\\] are also reporting seeds"),
    ({"tune": {"seeds": 0}}, "tune.seeds"),
    ({"tune": {"seed": 2}}, "tune must be a mapping"),
])
def test_bad_tune_blocks_are_refused(tmp_path, change, match):
    with pytest.raises(InputError, match=match):
        parse_spec(TINY | change, "tiny.yaml", tmp_path)


def test_unequal_grids_are_refused(tmp_path):
    data = TINY | {"algorithms": [{"name": "rebel", "mode": "exact", "eta": [0.1, 1.0, 10.0]},
                                  {"name": "npg", "mode": "exact", "eta": [0.1, 1.0]}]}
    with pytest.raises(InputError, match="grids of the same size"):
        tuning.tuning_spec(parse_spec(data, "tiny.yaml", tmp_path))


# ----- aggregate estimators against direct computations ---------------------------------------------
def test_iqm_is_the_mean_of_the_middle_half():
    x = np.arange(1.0, 41.0).reshape(10, 4)  # 40 values: the middle half is 11..30
    assert aggregate.iqm(x) == pytest.approx(np.mean(np.arange(11.0, 31.0)))


def test_probability_of_improvement_against_pair_enumeration():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, (5, 3)).astype(float), rng.integers(0, 4, (7, 3)).astype(float)
    direct = np.mean([np.mean([1.0 if a < b else 0.5 if a == b else 0.0 for a in x[:, j] for b in y[:, j]])
                      for j in range(3)])
    assert aggregate.probability_of_improvement(x, y) == pytest.approx(direct, abs=1e-15)
    assert aggregate.probability_of_improvement(x, y) + aggregate.probability_of_improvement(y, x) == pytest.approx(1)


def test_bootstrap_is_stratified_by_problem():
    """Runs identical within each problem but different across problems: resampling within problems
    changes nothing (a one-point interval); a pooled bootstrap would mix the problems and vary."""
    scores = np.tile(np.array([[0.01, 0.1, 0.5, 0.9]]), (8, 1))
    p, lo, hi = aggregate.stratified_interval(scores, aggregate.iqm)
    assert lo == hi == p
    y, ylo, yhi = aggregate.profile_band(scores)
    assert np.array_equal(ylo, y) and np.array_equal(yhi, y)
    assert aggregate.profile(scores, np.array([0.05, 0.2, 1.0])) == pytest.approx([0.25, 0.5, 1.0])


# ----- the README leads its results with the generated table ------------------------------------------
def test_readme_claims_table_is_figures_claims_md():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- claims:start -->\n(.*?)<!-- claims:end -->", text, re.S)
    assert m, "README.md lost its claims table"
    assert m.group(1) == (ROOT / "figures" / "claims.md").read_text(), \
        "README's claims table drifted from figures/claims.md (testbed reproduce writes it): paste it"
    assert text.index("<!-- claims:start -->") < text.index("## Figures"), "the claims table must lead the results"


def _lm_folder(d: Path, wins: dict[str, list[float]], kl: dict[str, list[float]] | None = None) -> Path:
    """An LM study folder: each method's final rows with these win rates (and ``kl``: these eval/kl, else 1)."""
    import csv

    from testbed.results import LM_COLUMNS
    d.mkdir(parents=True)
    rows = []
    for i, (method, ws) in enumerate(wins.items()):
        for seed, w in enumerate(ws):
            for t in (0, 1, 2):
                r = {c: "" for c in LM_COLUMNS}
                r.update(run_id=f"{method}-{i}-s{seed}", problem="p", algorithm=method, seed=seed, iteration=t)
                if t == 2:
                    r.update({"eval/win_rate": w, "eval/win_rate_lo": 0, "eval/win_rate_hi": 1,
                              "eval/kl": kl[method][seed] if kl else 1.0})
                rows.append(r)
    with open(d / "metrics.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LM_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    return d


def test_lm_claims_use_a_t_interval_over_seeds_and_one_seed_is_inconclusive(tmp_path):
    from scipy import stats

    rebel, ppo = [0.7, 0.75, 0.8], [0.5, 0.52, 0.6]
    _lm_folder(tmp_path / "a" / "tldr_smollm2_quick", {"rebel": rebel, "ppo": ppo})
    c = claims.LM_CLAIMS[0](tmp_path / "a")
    d = np.subtract(rebel, ppo)
    lo, hi = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert c.value == pytest.approx((d.mean(), lo, hi)) and c.verdict == claims.SUPPORTED
    _lm_folder(tmp_path / "b" / "tldr_smollm2_quick", {"rebel": [0.9], "ppo": [0.1]})
    one = claims.LM_CLAIMS[0](tmp_path / "b")
    assert one.verdict == claims.INCONCLUSIVE and "one seed" in one.note


def test_lm_ratio_claims_take_the_t_interval_of_the_log_ratios(tmp_path):
    """A ratio's interval is Student's t on the log ratios, exponentiated: the geometric mean, an interval > 0 (on the
    ratios themselves, 1.2, 3 and 5 give a lower end below 0); a ratio <= 0 keeps the arithmetic interval."""
    from scipy import stats

    rebel = [1.2, 3.0, 5.0]
    c = claims.LM_CLAIMS[2](_lm_folder(tmp_path / "a" / "tldr_smollm2_quick", {"rebel": [0.5] * 3, "ppo": [0.5] * 3},
                                       {"rebel": rebel, "ppo": [1.0] * 3}).parent)
    logs = np.log(rebel)
    lo, hi = stats.t.interval(0.95, 2, loc=logs.mean(), scale=stats.sem(logs))
    assert c.value == pytest.approx((np.exp(logs.mean()), np.exp(lo), np.exp(hi)), rel=1e-12)
    assert 0 < c.value[1] < c.value[0] < c.value[2]
    assert stats.t.interval(0.95, 2, loc=np.mean(rebel), scale=stats.sem(rebel))[0] < 0  # the arithmetic one
    neg = claims.LM_CLAIMS[2](_lm_folder(tmp_path / "b" / "tldr_smollm2_quick", {"rebel": [0.5] * 3, "ppo": [0.5] * 3},
                                         {"rebel": [-0.2, 3.0, 5.0], "ppo": [1.0] * 3}).parent)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean([-0.2, 3, 5]), scale=stats.sem([-0.2, 3, 5]))
    assert neg.value == pytest.approx((np.mean([-0.2, 3, 5]), lo, hi), rel=1e-12) and "a ratio ≤ 0" in neg.note


def test_a_bandit_only_reproduce_keeps_the_lm_studys_claims(tmp_path):
    """write_claims stores the LM study's claims beside claims.md when its folder is under --runs, and reads
    them back when it is not (a bandit-only `testbed reproduce` on a fresh machine): the LM rows survive."""
    rebel, ppo = [0.7, 0.75, 0.8], [0.5, 0.52, 0.6]
    _lm_folder(tmp_path / "with" / "tldr_smollm2_quick", {"rebel": rebel, "ppo": ppo})
    a = claims.write_claims(tmp_path / "with", tmp_path / "figs" / "claims.md").read_text().splitlines()
    (tmp_path / "without").mkdir()
    b = claims.write_claims(tmp_path / "without", tmp_path / "figs" / "claims.md").read_text().splitlines()
    n = len(claims.LM_CLAIMS)
    assert a[-n:] == b[-n:]  # the LM rows, values and verdicts included
    assert "**supported**" in a[-n] and "no data" not in a[-n]  # REBEL vs PPO: a value from the LM folder
    (tmp_path / "figs" / "claims-llm.json").unlink()
    c = claims.write_claims(tmp_path / "without", tmp_path / "figs" / "claims.md").read_text().splitlines()
    assert all("no data" in row for row in c[-n:])


def test_the_committed_lm_claims_are_the_rows_of_figures_claims_md():
    root = Path(__file__).resolve().parents[1]
    kept = claims.collect(root / "no-such-runs-folder", root / "figures" / "claims-llm.json")
    n = len(claims.LM_CLAIMS)
    rows = claims.claims_markdown(kept).splitlines()[-n:]
    assert rows == (root / "figures" / "claims.md").read_text().splitlines()[-n:]


def test_reproduce_llm_quick_writes_the_lm_rows_of_the_study_it_ran(tmp_path, monkeypatch):
    """`testbed reproduce --llm --quick` with runs/tldr_smollm2 (the full study) also there: the LM rows come
    from tldr_smollm2_quick, the study just run (testbed/llm/study.py), not from the full study's folder."""
    import types

    import testbed.llm.spec
    import testbed.llm.train
    import testbed.plotting.llm
    from testbed.llm.study import reproduce_llm

    runs = tmp_path / "runs"
    _lm_folder(runs / "tldr_smollm2", {"rebel": [0.1, 0.12, 0.11], "ppo": [0.8, 0.82, 0.85]})  # REBEL behind
    monkeypatch.setattr(testbed.llm.spec, "load_lm_spec",
                        lambda path: types.SimpleNamespace(model={}, reward={}, algorithms=[1, 2], seeds=[0, 1, 2]))
    monkeypatch.setattr(testbed.llm.train, "run_lm_spec", lambda spec, out, **kw: _lm_folder(
        out, {"rebel": [0.7, 0.75, 0.8], "ppo": [0.5, 0.52, 0.6]}))  # REBEL ahead
    for name in ("plot_llm_reward_kl", "plot_llm_winrate", "llm_table"):
        monkeypatch.setattr(testbed.plotting.llm, name, lambda run_dir, out, **kw: out)
    reproduce_llm(figures=tmp_path / "figs", runs=runs, quick=True, progress=False)
    n = len(claims.LM_CLAIMS)
    rows = (tmp_path / "figs" / "claims.md").read_text().splitlines()[-n:]
    assert all("`tldr_smollm2_quick`" in r for r in rows), rows
    assert "**supported**" in rows[0] and "| 0.21 [" in rows[0]  # mean REBEL − PPO win rate of the quick study
    kept = claims.collect(tmp_path / "nothing", tmp_path / "figs" / "claims-llm.json")[-n:]
    assert [c.experiment for c in kept] == ["tldr_smollm2_quick"] * n  # and claims-llm.json stores those rows
    assert claims.write_claims(runs, tmp_path / "f2" / "claims.md", lm_study="tldr_smollm2").read_text() \
        .splitlines()[-n] != rows[0]  # naming the full study reads the full study


@pytest.mark.parametrize("rate,expected", [(-0.45, claims.NOT_SUPPORTED), (-0.55, claims.SUPPORTED)])
def test_inexact_regression_claim_asks_for_the_n_to_the_minus_half_rate(tmp_path, rate, expected):
    """Claim 3 says "at least like N^-1/2" (the √(C·ε) term of REBEL's bound, ε ∝ 1/N): a slope of −0.45 falls
    short of it, −0.55 meets it."""
    rng = np.random.default_rng(0)
    finals = {"rebel-exact": {"p": [0.1] * 10}}
    for n in (100, 400, 1600, 6400):
        finals[f"rebel-sampled(pairs={n})"] = {"p": list(0.1 + n ** rate * (1 + 0.01 * rng.standard_normal(10)))}
    _write_run_folder(tmp_path / "rebel_error_vs_n", finals, list(range(10)))
    c = claims.inexact_regression(tmp_path)
    assert c.value[0] == pytest.approx(rate, abs=0.01) and c.verdict == expected, c.value
