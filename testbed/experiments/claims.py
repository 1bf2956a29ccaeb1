"""The paper's claims, checked: ``testbed reproduce`` writes ``figures/claims.md`` from the run folders.

Each claim names the experiment that tests it, a statistic, its 95% interval and the region of values
that the claim asserts. The verdict is computed, never typed, by one rule (:func:`verdict`):

- **supported** — the whole 95% interval lies inside the claimed region;
- **not supported** — the whole interval lies outside it;
- **inconclusive** — the interval straddles or touches a boundary of the region; or a boundary lies within
  the Monte-Carlo error of a bootstrap interval's end (below); or there is no data (e.g. the LM study was
  not run, or ran with one seed so there is no interval over seeds).

Boundaries are compared exactly (no rounding tolerance). A bootstrap interval's ends are estimates from B
resamples; the verdict must not hang on which resamples were drawn. So each end carries a Monte-Carlo
band — the order statistics at ranks B·q ± 3·√(B·q(1 − q)), q = 0.025 or 0.975, which bracket the ideal
(B = ∞) end — and while a boundary of the claimed region lies inside a band, the resamples are doubled
(:func:`testbed.plotting.aggregate.bootstrap_interval`: from 2000 up to 256000). A boundary still inside a
band after that gives *inconclusive* ("within Monte-Carlo error"); otherwise the rule above is applied to
the interval, whose ends are then well clear of the boundary compared with their Monte-Carlo error. The
probability of improvement is a ratio of integer counts rounded once, so a resample worth exactly ½ is 0.5.

Exact experiments (no sampling) have a degenerate interval [x, x]. Intervals: a stratified bootstrap
over seeds (:mod:`testbed.plotting.aggregate`) for the bandit comparison; a percentile bootstrap over
seeds for slopes and ratios; Student's t over seeds for the LM study (few seeds; its ratios on a log scale).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from testbed.algorithms import ALGORITHMS, build_config
from testbed.io import atomic_write
from testbed.plotting.aggregate import (
    BETTER,
    MAX_REPS,
    REPS,
    Interval,
    bootstrap_interval,
    poi_bootstrap,
    score_matrices,
    within_error,
)
from testbed.plotting.common import _load
from testbed.plotting.llm import read_lm_metrics, seconds_per_iteration

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
INF = math.inf


def verdict(low: float, high: float, region: tuple[float, float], bands=None) -> str:
    """The rule: *supported* if [low, high] ⊆ region, *not supported* if the two do not meet,
    *inconclusive* otherwise, or if the interval is not finite-valued (no data), or if ``bands`` (the
    Monte-Carlo band (lo, hi) of each bootstrap end) has values on both sides of a boundary of the region
    (:func:`~testbed.plotting.aggregate.within_error`). Boundaries are compared exactly."""
    a, b = region
    if any(v is None or math.isnan(v) for v in (low, high)) or low > high:
        return INCONCLUSIVE
    if bands and within_error(bands, region):
        return INCONCLUSIVE
    if a <= low and high <= b:
        return SUPPORTED
    if high < a or low > b:
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class Claim:
    claim: str
    experiment: str
    statistic: str
    region: tuple[float, float]
    value: tuple[float, float, float] | None = None  # (point, low, high)
    note: str = ""
    bands: tuple | None = None  # a bootstrap interval's Monte-Carlo band of each end (Interval.bands)

    @property
    def verdict(self) -> str:
        return INCONCLUSIVE if self.value is None else verdict(self.value[1], self.value[2], self.region, self.bands)

    def set_interval(self, iv: Interval, note: str = "") -> None:
        """The value and bands of a bootstrap interval; the note says how many resamples when more than
        the first :data:`REPS` were needed, and when a boundary stayed within Monte-Carlo error."""
        self.value, self.bands = iv.value, iv.bands
        mc = ("" if iv.reps == REPS else f"{iv.reps} bootstrap resamples (fewer left a boundary within the "
              "Monte-Carlo error of an interval end)")
        if iv.near(self.region):
            mc = f"a boundary is within the Monte-Carlo error of an interval end after {iv.reps} bootstrap resamples"
        self.note = "; ".join(t for t in (note, mc) if t)


def _region(r: tuple[float, float]) -> str:
    a, b = r
    return f"≤ {b:g}" if a == -INF else f"≥ {a:g}" if b == INF else f"[{a:g}, {b:g}]"


def _boot(samples: list[np.ndarray], stat, region: tuple[float, float]) -> Interval:
    """stat(*samples) with a 95% percentile bootstrap resampling each sample independently (more resamples
    while a boundary of ``region`` is within Monte-Carlo error of an end)."""
    def draw(rng, k):
        return [stat(*(s[rng.integers(0, len(s), len(s))] for s in samples)) for _ in range(k)]
    return bootstrap_interval(stat(*samples), draw, region)


def _finals(run_dir: Path, column: str) -> dict[tuple[str, str], dict[int, float]]:
    """(problem, label) → seed → the column at the last evaluated iteration."""
    _, runs, per_run = _load(run_dir)
    out: dict = {}
    for run_id, rows in per_run.items():
        run = runs[run_id]
        out.setdefault((run["problem"], run["label"]), {})[run["seed"]] = rows[-1][column]
    return out


# ----- the claims ------------------------------------------------------------------------------
def rebel_is_npg(runs: Path) -> Claim:
    c = Claim("REBEL ≡ NPG when y′ ~ π_t (exact, log-linear policy)", "linear_rebel_vs_npg",
              "max over η ∈ {0.1, 1, 10} and t ≤ 200 of the absolute difference J(π_t^REBEL) − J(π_t^NPG)", (0.0, 1e-8))
    d = runs / "linear_rebel_vs_npg"
    if not (d / "metrics.csv").is_file():
        return c
    _, runs_, per_run = _load(d)
    curves = {(r["problem"], r["label"]): [x["reward"] for x in per_run[i]] for i, r in runs_.items() if r["seed"] == 0}
    diffs, unif = [], []
    for (p, label), ys in curves.items():
        if label.startswith("npg-exact"):
            eta = label[len("npg-exact"):]
            diffs.append(np.max(np.abs(np.array(curves[(p, "rebel-exact-ypi" + eta)]) - ys)))
            unif.append(np.max(np.abs(np.array(curves[(p, "rebel-exact-yunif" + eta)]) - ys)))
    m = float(max(diffs))
    u = float(max(unif))
    c.value = (m, m, m)
    c.note = f"exact runs; y′ ~ uniform: {u:.3g}" + (" (a realisable problem: the same update)" if u <= 1e-8 else "")
    return c


def mirror_descent_bound(runs: Path) -> Claim:
    c = Claim("Exact REBEL obeys the mirror-descent rate J* − J(π_T) ≤ KL(π*‖π₀)/(ηT) + (J* − J(π₀))/T",
              "tabular_rebel_vs_npg", "max over η ∈ {0.1, 1, 10} and 1 ≤ T ≤ 200 of (J* − J(π_T)) / bound(T)",
              (0.0, 1.0))
    d = runs / "tabular_rebel_vs_npg"
    if not (d / "metrics.csv").is_file():
        return c
    _, runs_, per_run = _load(d)
    ratios = []
    for run_id, run in runs_.items():
        th = run.get("theory")
        if run["seed"] != 0 or not th or run["algorithm"] != "rebel" or run["config"].get("mode") != "exact":
            continue
        for r in per_run[run_id]:
            if r["iteration"] >= 1:
                ratios.append(r["suboptimality"] / ((th["kl_star_init_over_eta"] + th["gap0"]) / r["iteration"]))
    if ratios:
        m = float(max(ratios))
        c.value = (m, m, m)
    return c


def inexact_regression(runs: Path) -> Claim:
    c = Claim("REBEL keeps the guarantee with an inexact regression: the excess sub-optimality over the exact update "
              "shrinks at least like N^-1/2 in the pairs N per iteration", "rebel_error_vs_n",
              "slope of log abs(J_exact(π_T) − J_sampled(π_T)) (mean over seeds) against log N, N = 100…6400, T = 20",
              (-INF, -0.5))
    d = runs / "rebel_error_vs_n"
    if not (d / "metrics.csv").is_file():
        return c
    finals = _finals(d, "suboptimality")
    exact = next(v for (p, lab), v in finals.items() if lab == "rebel-exact")
    ref = float(np.mean(list(exact.values())))
    by_n = {}
    for (_, lab), v in finals.items():
        if lab.startswith("rebel-sampled(pairs="):
            by_n[int(lab.split("=")[1].rstrip(")"))] = np.array(list(v.values())) - ref
    ns = sorted(by_n)

    def slope(*samples):
        y = [math.log(max(abs(float(np.mean(s))), 1e-300)) for s in samples]
        return float(np.polyfit(np.log(ns), y, 1)[0])

    c.set_interval(_boot([by_n[n] for n in ns], slope, c.region))
    return c


def _pref(runs: Path):
    d = runs / "pref_nlhf_eps"
    if not (d / "metrics.csv").is_file():
        return None
    _, runs_, per_run = _load(d)
    out = {}
    for run_id, run in runs_.items():
        col = "exploitability_avg" if run.get("report_iterate") == "avg" else "exploitability"
        out.setdefault(run["label"], {})[run["problem"]] = per_run[run_id][-1][col]
    return out


def minimax_average_iterate(runs: Path) -> Claim:
    c = Claim("REBEL-preference's average iterate reaches the minimax winner under intransitive preferences",
              "pref_nlhf_eps", "max over the 11 values of ε of the exploitability of π̄_T at T = 1000 (exact)", (0.0, 0.01))
    expl = _pref(runs)
    if expl and "rebel_pref-exact" in expl:
        m = float(max(expl["rebel_pref-exact"].values()))
        c.value = (m, m, m)
    return c


def bt_misses_winner(runs: Path) -> Claim:
    c = Claim("…where the Bradley–Terry-reward method does not", "pref_nlhf_eps",
              "min over ε ≠ 0 of the exploitability of BT-reward REBEL's π_T at T = 1000 (exact)", (0.01, INF))
    expl = _pref(runs)
    if expl and "bt-reward-rebel" in expl:
        vals = [v for p, v in expl["bt-reward-rebel"].items() if not p.endswith("+0")]
        m = float(min(vals))
        c.value, c.note = (m, m, m), "at ε = 0 the preferences are transitive and BT finds the winner"
    return c


def _tuned(runs: Path, study: str = "compare_tuned"):
    d = runs / study
    return d if (d / "metrics.csv").is_file() else None


def bandit_vs(other: str, study: str = "compare_tuned", rebel: str = "rebel-sampled", where: str = "bandits"):
    def claim(runs: Path) -> Claim:
        c = Claim(f"REBEL ≥ {other.split('-')[0].upper()} at a matched budget of responses ({where}, tuned)",
                  study, f"probability that a {rebel} run ends with a lower normalised sub-optimality than a "
                  f"{other} run (fresh seeds, every problem of the study)", BETTER)
        d = _tuned(runs, study)
        if d:
            scores, problems = score_matrices(d)
            c.set_interval(poi_bootstrap(scores[rebel], scores[other], c.region),
                           f"{len(problems)} problem(s) × {scores[rebel].shape[0]} seeds" + (
                               "; online DPO makes half the oracle queries (one preference per pair)"
                               if other.startswith("dpo") else ""))
        return c
    return claim


def _pooled(d: Path, label: str, column: str) -> list[np.ndarray]:
    return [np.array(list(v.values())) for (p, lab), v in sorted(_finals(d, column).items()) if lab == label]


def kl_vs_ppo_bandit(runs: Path) -> Claim:
    c = Claim("REBEL's KL(π‖π_ref) is slightly larger than PPO's (bandits, tuned)", "compare_tuned",
              "ratio of mean final KL(π_T‖π_ref), REBEL / PPO, over 4 problems × 10 seeds", (1.0, 2.0))
    d = _tuned(runs)
    if d:
        rebel, ppo = _pooled(d, "rebel-sampled", "kl_ref"), _pooled(d, "ppo", "kl_ref")
        k = len(rebel)
        c.set_interval(_boot(rebel + ppo, lambda *s: float(np.mean(np.concatenate(s[:k])) / np.mean(np.concatenate(s[k:]))),
                             c.region), "'slightly larger' read as a ratio in [1, 2]; the bandit runs have β = 0")
    return c


def models_held(runs: Path) -> Claim:
    c = Claim("REBEL holds fewer models than PPO (LM track)", "the algorithms' declarations",
              "models held by REBEL − by PPO (policy, π_ref, critic, reward model)", (-INF, -1.0))

    def count(name):
        cls = ALGORITHMS[name]
        cfg = build_config(cls.Config, {}, name, "lm")
        return 1 + cls.uses_reference(cfg) + cls.needs_critic(cfg) + cls.needs_reward(cfg)

    n = float(count("rebel") - count("ppo"))
    c.value, c.note = (n, n, n), f"REBEL {count('rebel')}, PPO {count('ppo')}"
    return c


def step_cost_bandit(runs: Path) -> Claim:
    c = Claim("REBEL's update is cheaper than PPO's (bandits, tuned, same 500 responses)", "compare_tuned",
              "ratio of wall seconds per iteration, REBEL / PPO (stacks of seeds; resampled over evaluation intervals)",
              (0.0, 1.0))
    d = _tuned(runs)
    if d:
        _, runs_, per_run = _load(d)
        per = {}
        for run_id, run in runs_.items():
            rows = per_run[run_id]
            w = np.array([r["wall_time"] for r in rows], dtype=float)
            its = np.diff([r["iteration"] for r in rows])
            if run["seed"] == min(s["seed"] for s in runs_.values()) and np.all(np.isfinite(w)):
                per.setdefault(run["label"], []).append(np.diff(w) / its)
        if "rebel-sampled" in per and "ppo" in per:
            c.set_interval(_boot([np.concatenate(per["rebel-sampled"]), np.concatenate(per["ppo"])],
                                 lambda a, b: float(np.mean(a) / np.mean(b)), c.region), "machine-dependent (wall time)")
    return c


# ----- the LM study (testbed reproduce --llm [--quick]: the study it ran; else runs/tldr_smollm2, else quick) ---
LM_STUDIES = ("tldr_smollm2", "tldr_smollm2_quick")


def _lm_dir(runs: Path, study: str | None = None) -> Path | None:
    """The LM study's folder under ``runs``: ``study`` (the one just run) if named, else the first of
    :data:`LM_STUDIES` there; None if it is not there."""
    return next((runs / n for n in ((study,) if study else LM_STUDIES) if (runs / n / "metrics.csv").is_file()), None)


def _lm(runs: Path, study: str | None = None):
    """(study name, method → seed → final row, method → seed → rows) of the LM study folder, or None."""
    d = _lm_dir(runs, study)
    if d is None:
        return None
    finals, all_rows = {}, {}
    for run_id, rows in read_lm_metrics(d).items():
        method, seed = run_id.split("-")[0], int(run_id.rsplit("-s", 1)[1])
        finals.setdefault(method, {})[seed] = rows[-1]
        all_rows.setdefault(method, {})[seed] = rows
    return d.name, finals, all_rows


def _lm_claim(claim: str, statistic: str, region, per_seed, ratio: bool = False) -> Claim:
    """A claim on the LM study: ``per_seed(finals, rows, seed)`` gives one value per seed that both methods ran;
    the interval is Student's t over seeds (none for one seed: inconclusive). ``ratio``: the values are ratios,
    so the interval is Student's t on their logarithms, exponentiated (around the geometric mean): positive, as a
    ratio is (on the ratios themselves, 3 seeds of KL ratios gave 2.43 [−1.13, 6.00]); a ratio ≤ 0 (an estimated
    KL below 0) leaves the arithmetic interval, said in the note."""
    def fn(runs: Path, study: str | None = None) -> Claim:
        c = Claim(claim, "LM study (`testbed reproduce --llm`)", statistic, region)
        lm = _lm(runs, study)
        if lm is None:
            c.note = "not run: testbed reproduce --llm [--quick]"
            return c
        name, finals, rows = lm
        c.experiment = name
        try:
            vals = [per_seed(finals, rows, s) for s in sorted(finals.get("rebel", {}))]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
        except KeyError as e:
            c.note = f"no {e} run in {name}"
            return c
        if not vals:
            c.note = f"not measured in {name}"
            return c
        logs = ratio and all(v > 0 for v in vals)
        c.value = interval_over_seeds(vals, log=logs)
        c.note = f"{len(vals)} seed(s)" + ("; one seed: no interval over seeds" if len(vals) < 2 else "") + (
            "; a ratio ≤ 0: arithmetic mean and t-interval" if ratio and not logs else "")
        if len(vals) == 1:
            c.value = (vals[0], math.nan, math.nan)
        return c
    return fn


def _diff(column, other):
    return lambda f, r, s: f["rebel"][s][column] - f[other][s][column]


def _ratio(value):
    def ratio(f, r, s):
        den = value(f, r, s, "ppo")
        return value(f, r, s, "rebel") / den if den else math.nan  # nothing measured: no value for this seed
    return ratio


LM_CLAIMS = (
    _lm_claim("REBEL ≥ PPO on the LM task (oracle win rate vs π_ref)", "win rate REBEL − PPO per seed, mean over seeds",
              (0.0, INF), _diff("eval/win_rate", "ppo")),
    _lm_claim("REBEL ≥ DPO on the LM task (oracle win rate vs π_ref)", "win rate REBEL − DPO per seed, mean over seeds",
              (0.0, INF), _diff("eval/win_rate", "dpo")),
    _lm_claim("REBEL's KL is slightly larger than PPO's (LM)", "held-out KL ratio REBEL / PPO per seed, geometric mean",
              (1.0, 2.0), _ratio(lambda f, r, s, m: f[m][s]["eval/kl"]), ratio=True),
    _lm_claim("REBEL uses less memory than PPO (LM)", "peak memory ratio REBEL / PPO per seed, geometric mean",
              (0.0, 1.0), _ratio(lambda f, r, s, m: max(x["peak_memory_mb"] or 0 for x in r[m][s])), ratio=True),
    _lm_claim("REBEL's step is cheaper than PPO's (LM)", "training seconds per iteration, REBEL / PPO per seed, "
              "geometric mean", (0.0, 1.0), _ratio(lambda f, r, s, m: seconds_per_iteration(r[m][s])), ratio=True),
)

BANDIT_CLAIMS = (rebel_is_npg, mirror_descent_bound, inexact_regression, minimax_average_iterate, bt_misses_winner,
                 bandit_vs("ppo"), bandit_vs("dpo-online"),
                 bandit_vs("ppo-mlp", "compare_tuned_mlp", "rebel-mlp", "MLP policy"),
                 bandit_vs("dpo-online-mlp", "compare_tuned_mlp", "rebel-mlp", "MLP policy"),
                 kl_vs_ppo_bandit, models_held, step_cost_bandit)


def collect(runs: str | Path, kept: str | Path | None = None, lm_study: str | None = None) -> list[Claim]:
    """Every claim from the run folders under ``runs`` (a claim whose experiment is missing stays without
    a value: inconclusive); the LM rows as :func:`_lm_claims` finds them."""
    return [*(f(Path(runs)) for f in BANDIT_CLAIMS), *_lm_claims(Path(runs), kept, lm_study)[0]]


def _lm_claims(runs: Path, kept: str | Path | None, lm_study: str | None) -> tuple[list[Claim], bool]:
    """The LM claims, and whether they were computed from an LM study folder (then :func:`write_claims` keeps them).
    From ``runs/lm_study`` when the LM study of that name was just run (``testbed reproduce --llm [--quick]``);
    otherwise from ``kept``, the JSON file of the last LM study's claims, so a bandit-only ``testbed reproduce``
    keeps the rows of the last ``testbed reproduce --llm``; without that file, from the LM study folder under
    ``runs`` (:data:`LM_STUDIES`, in order)."""
    if lm_study is None and kept is not None and Path(kept).is_file():
        stored = json.loads(Path(kept).read_text())
        return [Claim(**{**c, "region": tuple(c["region"]), "value": None if c["value"] is None else
                         tuple(math.nan if v is None else v for v in c["value"])}) for c in stored["claims"]], False
    return [f(runs, lm_study) for f in LM_CLAIMS], _lm_dir(runs, lm_study) is not None


def _fmt(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.4g}"


def claims_markdown(claims: list[Claim]) -> str:
    lines = ["| # | claim | experiment | statistic | claimed region | value [95% CI] | verdict | note |",
             "|---:|---|---|---|---|---|---|---|"]
    for i, c in enumerate(claims, 1):
        val = "no data" if c.value is None else (
            _fmt(c.value[0]) if c.value[1] == c.value[2] == c.value[0] else
            f"{_fmt(c.value[0])} [{_fmt(c.value[1])}, {_fmt(c.value[2])}]")
        exp = c.experiment if " " in c.experiment else f"`{c.experiment}`"
        lines.append(f"| {i} | {c.claim} | {exp} | {c.statistic} | {_region(c.region)} | {val} | "
                     f"**{c.verdict}** | {c.note} |")
    rule = ("Verdict rule (testbed/experiments/claims.py): *supported* if the whole 95% interval lies in the claimed "
            "region, *not supported* if it lies wholly outside, *inconclusive* if it straddles or touches a boundary, "
            "if a boundary is within the Monte-Carlo error of a bootstrap end, or there is no data (boundaries "
            "compared exactly; while a boundary is within an end's Monte-Carlo band, ranks B·q ± 3√(B·q(1 − q)), "
            f"the {REPS} bootstrap resamples are doubled, up to {MAX_REPS}). Exact experiments have a "
            "one-point interval.")
    return "\n".join(["# The paper's claims, checked", "", rule, "", *lines, ""])


def write_claims(runs: str | Path, out: str | Path, lm_study: str | None = None) -> Path:
    """figures/claims.md: the claims table from the run folders under ``runs``; ``lm_study``: the LM study
    just run (its folder under ``runs`` gives the LM rows). Beside the table, ``claims-llm.json`` holds the LM
    study's claims: rewritten when they were read from a study folder, read otherwise (:func:`collect`)."""
    out, runs = Path(out), Path(runs)
    kept = out.parent / "claims-llm.json"
    lm, fresh = _lm_claims(runs, kept, lm_study)
    if fresh:
        rows = [{**asdict(c), "value": c.value and [None if math.isnan(v) else v for v in c.value]} for c in lm]
        text = json.dumps({"note": "the LM study's claims, from the last testbed reproduce --llm", "claims": rows},
                          indent=1, ensure_ascii=False) + "\n"
        atomic_write(kept, lambda p: p.write_text(text))
    text = claims_markdown([*(f(runs) for f in BANDIT_CLAIMS), *lm])
    atomic_write(out, lambda p: p.write_text(text))
    return out


def interval_over_seeds(values, log: bool = False) -> tuple[float, float, float] | None:
    """Mean and 95% Student-t interval over seeds; None for fewer than two seeds (no interval). ``log``: of the
    logarithms of positive values, exponentiated (the geometric mean and its interval)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    v = np.log(v) if log else v
    h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    out = float(v.mean()), float(v.mean() - h), float(v.mean() + h)
    return tuple(math.exp(x) for x in out) if log else out
