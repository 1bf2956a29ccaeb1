"""Aggregates over problems with intervals, as rliable computes them (Agarwal et al. 2021, "Deep RL at
the edge of the statistical precipice"): the interquartile mean (IQM) of the normalised final
sub-optimality, the probability of improvement of each method over each other, and performance
profiles, each with a 95% percentile interval from a *stratified* bootstrap (runs are resampled within
each problem, problems are kept). The ``rliable`` package does not import in this environment (its
``arch`` dependency fails against pandas 3), so the same estimators are written on numpy/scipy here
and ``tests/test_claims.py`` checks them against direct computations.

Monte-Carlo error of an interval end (:func:`bootstrap_interval`): a percentile end estimated from B resamples
is the order statistic at rank B·q; the number of resamples below the ideal (B = ∞) quantile is binomial, so
the order statistics at ranks B·q ± z·√(B·q(1 − q)) (z = :data:`MC_Z`) bracket the ideal end — the end's
Monte-Carlo band. Given the boundaries a decision compares the interval with, the resamples are doubled
(new draws added to the old) while a boundary lies inside an end's band, up to :data:`MAX_REPS`.

Scores: the normalised final sub-optimality (J* − J(π_T)) / (J* − J(π_0)) of each run (lower is
better; 0 = optimal, 1 = no progress). A score matrix is [runs, problems] per method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import trim_mean  # noqa: E402

from testbed.errors import InputError  # noqa: E402
from testbed.io import atomic_write  # noqa: E402
from testbed.plotting.common import _load, read_config, save_figure  # noqa: E402

REPS = 2000  # bootstrap resamples (to start with, where a decision is taken: bootstrap_interval)
MAX_REPS = 256_000  # at most this many when a boundary stays within the Monte-Carlo band of an interval end
MC_Z = 3.0  # the Monte-Carlo band of an interval end: ±3 binomial standard deviations of its rank
CONFIDENCE = 0.95
TAUS = np.logspace(-4, 0, 41)  # performance-profile thresholds on the normalised sub-optimality
BETTER = (0.5, 1.0)  # a probability of improvement's question: is X better than Y more often than not?
HALF = (0.5, 0.5)  # ½ from either side: the aggregate table resamples a pair while ½ is within error of an end


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all runs × problems (rliable's ``aggregate_iqm``: 25% trimmed mean)."""
    return float(trim_mean(np.ravel(scores), 0.25))


def _strata(rng: np.random.Generator, n: int, tasks: int, reps: int) -> np.ndarray:
    """[reps, n, tasks] run indices, drawn with replacement within each problem (column)."""
    return rng.integers(0, n, size=(reps, n, tasks))


def _ends(boot: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap statistics (along axis 0)."""
    a = (1 - CONFIDENCE) / 2
    return np.quantile(boot, a, axis=0), np.quantile(boot, 1 - a, axis=0)


@dataclass(frozen=True)
class Interval:
    """A statistic, its 95% percentile-bootstrap interval, the Monte-Carlo band of each end
    ((low of the low end, high of the low end), (… of the high end)) and the resamples drawn."""
    point: float
    low: float
    high: float
    bands: tuple[tuple[float, float], tuple[float, float]]
    reps: int

    @property
    def value(self) -> tuple[float, float, float]:
        return self.point, self.low, self.high

    def mirrored(self, point: float) -> Interval:
        """The interval of 1 − the statistic (``point``: its value, computed exactly): ends and bands swapped and
        reflected."""
        (a, b), (c, d) = self.bands
        return Interval(point, 1.0 - self.high, 1.0 - self.low, ((1.0 - d, 1.0 - c), (1.0 - b, 1.0 - a)), self.reps)

    def near(self, region: tuple[float, float] | None) -> bool:
        """Whether a boundary of ``region`` is within the Monte-Carlo error of an interval end
        (:func:`within_error`)."""
        return region is not None and within_error(self.bands, region)


def within_error(bands, region: tuple[float, float]) -> bool:
    """Whether the Monte-Carlo band (lo, hi) of an interval end holds values on both sides of a boundary of the
    closed ``region`` [a, b] — below a and at or above it (lo < a ≤ hi), or at or below b and above it
    (lo ≤ b < hi): which side the ideal end is on, and so a verdict, is then not settled by the resamples."""
    a, b = region
    return any((math.isfinite(a) and lo < a <= hi) or (math.isfinite(b) and lo <= b < hi) for lo, hi in bands)


def bootstrap_interval(point: float, draw: Callable[[np.random.Generator, int], np.ndarray],
                       region: tuple[float, float] | None = None, reps: int = REPS, seed: int = 0,
                       max_reps: int = MAX_REPS) -> Interval:
    """The percentile interval of ``draw(rng, k)`` (k bootstrap statistics), with ``reps`` resamples, doubled
    while a boundary of ``region`` is within the Monte-Carlo band of an interval end (up to ``max_reps``):
    the band's ends are the order statistics at ranks B·q ± z·√(B·q(1 − q)), B resamples, q = 0.025 or 0.975,
    z = :data:`MC_Z` (the count of resamples below the ideal quantile is binomial(B, q))."""
    rng = np.random.default_rng(seed)
    boot = np.asarray(draw(rng, reps), dtype=float)
    while True:
        b, ordered = len(boot), np.sort(boot)
        bands = []
        for q in ((1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2):
            h = MC_Z * math.sqrt(b * q * (1 - q))
            bands.append((float(ordered[max(0, math.floor(b * q - h))]), float(ordered[min(b - 1, math.ceil(b * q + h))])))
        low, high = _ends(ordered)
        out = Interval(float(point), float(low), float(high), (bands[0], bands[1]), b)
        if b >= max_reps or not out.near(region):
            return out
        boot = np.concatenate([boot, np.asarray(draw(rng, min(b, max_reps - b)), dtype=float)])


def stratified_interval(scores: np.ndarray, stat, reps: int = REPS, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): ``stat`` of [runs, problems] scores and its 95% percentile interval over a
    bootstrap that resamples runs within each problem."""
    scores = np.asarray(scores, dtype=float)
    n, tasks = scores.shape
    idx = _strata(np.random.default_rng(seed), n, tasks, reps)
    boot = np.array([stat(np.take_along_axis(scores, i, axis=0)) for i in idx])
    low, high = _ends(boot)
    return float(stat(scores)), float(low), float(high)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """P(X better than Y): the mean over problems of P(x < y) + ½P(x = y) for a run x of method X and a
    run y of Y on that problem (lower scores are better; rliable's Mann–Whitney form). ``x`` [runs, problems]
    and ``y`` [runs', problems], or stacks of them [..., runs, problems] (one value per stack). Computed as one
    ratio of integer counts, Σ(2·#(x < y) + #(x = y)) / (2·runs·runs'·problems), so the value is the rational
    rounded once: a value of exactly ½ is 0.5, never 0.49999999999999994."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    xs, ys = x[..., :, None, :], y[..., None, :, :]
    counts = 2 * np.sum(xs < ys, axis=(-3, -2, -1)) + np.sum(xs == ys, axis=(-3, -2, -1))
    out = counts / (2 * x.shape[-2] * y.shape[-2] * x.shape[-1])
    return float(out) if np.ndim(out) == 0 else out


def poi_bootstrap(x: np.ndarray, y: np.ndarray, region: tuple[float, float] | None = None, reps: int = REPS,
                  seed: int = 0) -> Interval:
    """Probability of improvement with its 95% interval: X's and Y's runs resampled independently within
    each problem (rliable's ``StratifiedIndependentBootstrap``); more resamples while a boundary of ``region``
    is within the Monte-Carlo band of an end (:func:`bootstrap_interval`). The resamples do not depend on the order
    of the two arguments: the pair is bootstrapped in a canonical order (by the score arrays' bytes), and P(Y better
    than X) is 1 − P(X better than Y) in every resample, so the interval of (y, x) is the mirror of that of (x, y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if (x.shape, x.tobytes()) > (y.shape, y.tobytes()):
        mirrored = None if region is None else (1.0 - region[1], 1.0 - region[0])
        return poi_bootstrap(y, x, mirrored, reps, seed).mirrored(probability_of_improvement(x, y))
    chunk = max(1, 2 ** 22 // (x.shape[0] * y.shape[0] * x.shape[1]))  # comparisons held at once

    def draw(rng, k):
        ix, iy = _strata(rng, x.shape[0], x.shape[1], k), _strata(rng, y.shape[0], y.shape[1], k)
        return np.concatenate([probability_of_improvement(np.take_along_axis(x[None], ix[i:i + chunk], 1),
                                                          np.take_along_axis(y[None], iy[i:i + chunk], 1))
                               for i in range(0, k, chunk)])

    return bootstrap_interval(probability_of_improvement(x, y), draw, region, reps, seed)


def profile(scores: np.ndarray, taus: np.ndarray = TAUS) -> np.ndarray:
    """Performance profile: the fraction of runs (all problems) with normalised sub-optimality ≤ τ."""
    return np.mean(np.ravel(scores)[:, None] <= taus[None, :], axis=0)


def profile_band(scores: np.ndarray, taus: np.ndarray = TAUS, reps: int = REPS, seed: int = 0):
    """The profile and its pointwise 95% stratified-bootstrap band."""
    n, tasks = scores.shape
    idx = _strata(np.random.default_rng(seed), n, tasks, reps)
    boot = np.array([profile(np.take_along_axis(scores, i, axis=0), taus) for i in idx])
    return (profile(scores, taus), *_ends(boot))


def score_matrices(run_dir: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """method label → [seeds, problems] normalised final sub-optimality of a run folder, and the problems."""
    config, runs, per_run = _load(Path(run_dir))
    cells: dict = {}
    for run_id, rows in per_run.items():
        run = runs[run_id]
        gap0, gap = rows[0]["suboptimality"], rows[-1]["suboptimality"]
        if gap0 is None or gap is None:
            continue
        cells.setdefault(run["label"], {}).setdefault(run["problem"], {})[run["seed"]] = gap / gap0 if gap0 > 0 else 0.0
    if not cells:
        raise InputError(f"no sub-optimality rows in {str(run_dir)!r} to aggregate")
    problems = sorted({p for v in cells.values() for p in v})
    out = {}
    for label, by_problem in cells.items():
        seeds = sorted(set.intersection(*(set(by_problem.get(p, {})) for p in problems)))
        if not seeds:
            raise InputError(f"{label!r} has no seed run on every problem of {str(run_dir)!r}")
        out[label] = np.array([[by_problem[p][s] for p in problems] for s in seeds])
    return out, problems


def aggregates(run_dir: str | Path) -> dict:
    """IQM, probability of improvement (every ordered pair) and profiles of a run folder, with intervals."""
    scores, problems = score_matrices(run_dir)
    methods = sorted(scores)
    return {"problems": problems, "seeds": {m: int(scores[m].shape[0]) for m in methods},
            "iqm": {m: stratified_interval(scores[m], iqm) for m in methods},
            "poi": _poi_table(scores, methods),
            "profiles": {m: profile_band(scores[m]) for m in methods}}


def _poi_table(scores: dict, methods: list[str]) -> dict:
    """P(a better than b) with its interval for every ordered pair: each unordered pair bootstrapped once (more
    resamples while ½ is within the Monte-Carlo error of an end, from either side: :data:`HALF`) and its mirror cell
    the mirror (:meth:`Interval.mirrored`), so the two cells of a pair add up to 1 as the statistic does."""
    out = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            iv = poi_bootstrap(scores[a], scores[b], HALF)
            out[(a, b)] = iv.value
            out[(b, a)] = iv.mirrored(probability_of_improvement(scores[b], scores[a])).value
    return out


def _fmt(t) -> str:
    return f"{t[0]:.3g} [{t[1]:.3g}, {t[2]:.3g}]"


def aggregate_table(run_dir: str | Path, out: str | Path, agg: dict | None = None) -> Path:
    """The aggregates as markdown: IQM per method, then P(row better than column)."""
    agg = agg or aggregates(run_dir)
    methods = sorted(agg["iqm"])
    lines = ["# Aggregates over problems (normalised final sub-optimality, lower is better)", "",
             f"Problems: {', '.join(agg['problems'])}. Score of a run: (J* − J(π_T)) / (J* − J(π_0)). 95% percentile "
             f"intervals from {REPS} stratified bootstrap resamples (runs resampled within each problem); for a probability of "
             f"improvement, doubled (up to {MAX_REPS}) while ½ lies within the Monte-Carlo error of an interval end, as "
             f"in the claims (claims.md), once per pair (P(column better than row) = 1 − P(row better than column)).", "",
             "| method | runs per problem | IQM [95% CI] |", "|---|---:|---|"]
    lines += [f"| {m} | {agg['seeds'][m]} | {_fmt(agg['iqm'][m])} |" for m in sorted(methods, key=lambda m: agg["iqm"][m][0])]
    lines += ["", "Probability of improvement P(row better than column) [95% CI]:", "",
              "| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for a in methods:
        lines.append(f"| {a} | " + " | ".join("—" if a == b else _fmt(agg["poi"][(a, b)]) for b in methods) + " |")
    out = Path(out)
    atomic_write(out, lambda p: p.write_text("\n".join(lines) + "\n"))
    return out


def plot_aggregate(run_dir: str | Path, out: str | Path) -> Path:
    """IQM with intervals, probability of improvement of each pair, performance profiles; writes the
    markdown table next to the figure (same stem, .md)."""
    agg = aggregates(run_dir)
    methods = sorted(agg["iqm"])
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, m in enumerate(methods):
        p, lo, hi = agg["iqm"][m]
        axes[0].errorbar([p], [i], xerr=[[p - lo], [hi - p]], fmt="o", color=colours[m], capsize=4)
    axes[0].set_yticks(range(len(methods)), methods)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("IQM of normalised final sub-optimality (lower is better)")
    pairs = [(a, b) for a in methods for b in methods if a < b]
    for i, (a, b) in enumerate(pairs):
        p, lo, hi = agg["poi"][(a, b)]
        axes[1].errorbar([p], [i], xerr=[[p - lo], [hi - p]], fmt="o", color=colours[a], capsize=4)
    axes[1].axvline(0.5, color="k", lw=0.8, ls=":")
    axes[1].set_yticks(range(len(pairs)), [f"P({a} better than {b})" for a, b in pairs], fontsize=7)
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("probability of improvement")
    for m in methods:
        y, lo, hi = agg["profiles"][m]
        axes[2].plot(TAUS, y, color=colours[m], label=m)
        axes[2].fill_between(TAUS, lo, hi, color=colours[m], alpha=0.2, lw=0)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("τ")
    axes[2].set_ylabel("fraction of runs with score ≤ τ")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3, lw=0.4)
    fig.suptitle(f"{read_config(Path(run_dir))['name']}: aggregates over {len(agg['problems'])} problems, 95% stratified "
                 "bootstrap intervals", fontsize=10)
    fig.tight_layout()
    aggregate_table(run_dir, Path(out).with_suffix(".md"), agg)
    return save_figure(fig, Path(out))


def selection_path(run_dir: str | Path) -> Path:
    """Where a tuned run folder's selection lives: ``<run_dir>-selection.yaml``, next to it."""
    return Path(run_dir).parent / f"{Path(run_dir).name}-selection.yaml"


def read_selection(run_dir: str | Path) -> dict:
    """The tuning scores and picks of a tuned run folder (``<run_dir>-selection.yaml``); empty if none."""
    path = selection_path(run_dir)
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def tuned_table(run_dir: str | Path, out: str | Path) -> Path:
    """The ranking table of a tuned run folder (:func:`testbed.plotting.curves.results_table`), led by the
    setting each method was tuned to and every grid point's tuning score."""
    from testbed.plotting.curves import results_table

    sel = read_selection(run_dir)
    if not sel:
        raise InputError(f"{str(run_dir)!r} has no {selection_path(run_dir).name} next to it "
                         "(it was not run with a tune: block)")
    out = Path(out)
    results_table(run_dir, out)
    body = out.read_text()
    lines = ["## Tuned settings", "",
             f"Chosen on tuning seeds {sel['tuning_seeds']}, reported on seeds {sel['reporting_seeds']} (disjoint). "
             f"Rule: {sel['rule']}.", "",
             "| method | tuned setting | tuning score of each grid point (mean normalised final sub-optimality) |",
             "|---|---|---|"]
    for m, pick in sel["methods"].items():
        setting = ", ".join(f"{k} = {v}" for k, v in pick["setting"].items())
        scores = "; ".join(f"{lab.removeprefix(m)}: {s:.3g}" for lab, s in pick["scores"].items())
        lines.append(f"| {m} | {setting} | {scores} |")
    head, _, rest = body.partition("\n## ")
    text = head + "\n" + "\n".join(lines) + "\n\n## " + rest
    atomic_write(out, lambda p: p.write_text(text))
    return out
