"""Experiment specs: data that says problem × algorithms × hyper-parameters × seeds × iterations.

A spec is a YAML (or JSON) file::

    name: rebel_vs_npg_tabular
    problems:                       # or `problem:` with one entry
      - {kind: tabular, family: random, contexts: 20, actions: 10, seed: 0}
      - {file: my_instance.npz}     # a user's own instance (path relative to the spec)
    algorithms:
      - {name: rebel, mode: exact, eta: [0.1, 1, 10]}      # lists expand to a grid
      - {module: my_rules.py:MyRule, eta: [0.5, 1]}        # your own rule (the testbed check interface)
      - {name: npg, mode: sampled, eta: 1, samples: 1000}
      - {name: dpo, mode: offline, pairs: 25000, iterations: 20}   # per-entry iterations
    seeds: 5                        # or a list [0, 3, 7]
    iterations: 200
    eval_every: 1                   # metrics every k iterations (and always the last)
    plot:                           # one mapping or a list; kinds: curve, frontier, sensitivity, table,
      - {kind: curve, panel_by: eta, x: iteration, y: suboptimality}   # simplex, exploitability, eps_sweep
      - {kind: table}
    trajectories: false             # write trajectory.csv (policy + average iterate per evaluated iteration)
    tune: {seeds: 3}                # equal-budget tuning: the algorithms' lists are each method's grid, chosen
                                    # on these tuning seeds (here 3 seeds after `seeds`), reported on `seeds`

Preference problems: ``{kind: preference, family: rps | dice | nlhf | cyclic_raters | raters | skew | bt}``
(``eps`` for nlhf, ``strength`` for rps, ``raters`` for raters, ``temperature`` for bt; ``pi_ref``: one
probability vector [Y] used in every context — the start pi_0 of every algorithm) or a file
with an array ``preferences``; they pair with the preference algorithms only.

Everything is validated before any work starts; a bad field raises :class:`InputError` naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from testbed.algorithms import ITEM_BYTES, build_config, check_pairing, on_track
from testbed.algorithms.base import UnreadField
from testbed.algorithms.user import spec_entry, spec_params
from testbed.errors import ROW_BYTES, InputError, check_memory, choice, positive_int
from testbed.io import read_yaml
from testbed.policies import POLICIES, default_kind, initial_policy
from testbed.problems import PreferenceBandit, TabularBandit, load_problem, make_linear, make_preference, make_tabular

TOP_KEYS = {"name", "description", "problem", "problems", "algorithms", "seeds", "iterations", "eval_every", "plot",
            "trajectories", "tune"}
PROBLEM_KEYS = {
    "tabular": {"kind", "family", "contexts", "actions", "seed", "gap", "noise_std", "name"},
    "linear": {"kind", "family", "contexts", "actions", "dim", "seed", "gap", "misspecification", "noise_std", "name"},
    "preference": {"kind", "family", "contexts", "actions", "seed", "eps", "strength", "raters", "temperature", "pi_ref",
                   "name"},
    "file": {"file", "name"},
}
PLOT_KINDS = (  # = testbed.plotting.draw.KINDS (tested), named here so a spec check needs no matplotlib
    "curve", "frontier", "sensitivity", "table", "simplex", "exploitability", "eps_sweep", "tuned_table", "aggregate")
PLOT_KEYS = {"kind", "name", "panel_by", "x", "y", "context"}
PLOT_Y = ("suboptimality", "reward", "kl_ref", "kl_reg_gap", "loss", "exploitability", "exploitability_avg")


@dataclass
class RunPlan:
    """One (problem, algorithm configuration, seed) point of the grid."""

    run_id: str
    problem: str
    algorithm: str
    label: str
    base_label: str
    config: dict
    swept: dict
    policy: dict | None
    seed: int
    iterations: int
    eval_every: int
    trajectory: bool = False


@dataclass
class Spec:
    name: str
    runs: list[RunPlan]
    problems: dict[str, TabularBandit | PreferenceBandit]
    problem_entries: dict[str, dict]
    plot: list[dict] = field(default_factory=list)
    source: str | None = None
    tune: dict | None = None  # equal-budget tuning (testbed/experiments/tuning.py): {seeds: [...]}
    data: dict | None = None  # the spec as written (tuning builds its tuning and report specs from it)

    def resolved(self) -> dict:
        """The fully resolved config (every default filled in), as written to the run folder."""
        return {
            "name": self.name,
            "source": self.source,
            "problems": {k: dict(v) for k, v in self.problem_entries.items()},  # the runner adds theory to these
            "plot": self.plot,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }


NOT_SWEPT = {"pi_ref"}  # list-valued fields that are values, not grids


def _grid(entry: dict) -> tuple[list[dict], list[str]]:
    swept = [k for k, v in entry.items() if isinstance(v, list) and k not in NOT_SWEPT]
    for k in swept:
        if not entry[k]:
            raise InputError(f"{k} is an empty list; give at least one value")
    points = [dict(entry, **dict(zip(swept, combo))) for combo in itertools.product(*(entry[k] for k in swept))]
    return points, swept


def _problem(entry: dict, where: str, base: Path) -> tuple[TabularBandit, dict]:
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping like {{kind: tabular, family: random}} (got {entry!r})")
    kind = "file" if "file" in entry else entry.get("kind", "tabular")
    if kind != "file":
        choice(f"{where}.kind", kind, ("tabular", "linear", "preference"))
    unknown = sorted(set(entry) - PROBLEM_KEYS[kind])
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}; a {kind} problem takes {sorted(PROBLEM_KEYS[kind])}")
    if kind == "file" and not isinstance(entry["file"], str | Path):
        raise InputError(f"{where}.file must be a path to an .npz instance file (got {entry['file']!r})")
    try:
        if kind == "file":
            path = Path(entry["file"])
            path = path if path.is_absolute() else base / path
            problem = load_problem(path)
            if "name" in entry:
                problem.name = str(entry["name"])
            return problem, {"file": str(path.resolve()), "name": problem.name}
        params = {k: v for k, v in entry.items() if k != "kind"}
        for k in ("contexts", "actions", "dim", "seed", "raters"):
            if k in params and (isinstance(params[k], bool) or not isinstance(params[k], int)):
                raise InputError(f"problem.{k} must be an integer (got {params[k]!r})")
        _check_problem_size(kind, params)
        problem = {"tabular": make_tabular, "linear": make_linear, "preference": make_preference}[kind](**params)
    except InputError as e:
        msg = str(e)
        if kind == "file":
            raise InputError(f"{where}.file: {msg}") from None
        raise InputError(f"{where}.{msg.removeprefix('problem.')}" if msg.startswith("problem.") else f"{where}: {msg}") from None
    resolved = {"kind": kind, **params, "name": problem.name}
    return problem, resolved


PROBLEM_ARRAYS = 6
"""Tables of one problem's size a run holds at once (rewards or features, pi_ref, the policy's logits,
probabilities and log-probabilities, the exact metrics' temporaries): the factor of the memory estimate."""


def _check_problem_size(kind: str, params: dict) -> None:
    """A generated problem's tables must fit in memory: refused before numpy allocates them."""
    X, Y = params.get("contexts", 1), params.get("actions", 1)
    if not all(isinstance(v, int) and v > 0 for v in (X, Y)):
        return  # the generator names the bad field
    per = {"tabular": 1, "linear": params.get("dim", 1), "preference": Y}[kind]
    if not isinstance(per, int) or per <= 0:
        return
    entries = X * Y * per
    check_memory("problem.contexts × actions", f"{kind} problem of {X} contexts × {Y} actions"
                 + (f" × {per}" if per > 1 else "") + f" = {entries:.3g} entries", 8.0 * PROBLEM_ARRAYS * entries)


def _plots(value) -> list[dict]:
    """``plot:`` is one mapping or a list of them; each gets a kind (default curve)."""
    if value is None:
        return [{"kind": "curve"}]
    entries = value if isinstance(value, list) else [value]
    out = []
    for i, p in enumerate(entries):
        where = f"plot[{i}]" if isinstance(value, list) else "plot"
        if not isinstance(p, dict) or set(p) - PLOT_KEYS:
            raise InputError(f"{where} must be a mapping with some of {sorted(PLOT_KEYS)} (got {p!r})")
        p = {"kind": "curve", **p}
        if p["kind"] == "curves":
            p["kind"] = "curve"
        choice(f"{where}.kind", p["kind"], PLOT_KINDS)
        if "context" in p and (isinstance(p["context"], bool) or not isinstance(p["context"], int) or p["context"] < 0):
            raise InputError(f"{where}.context must be a non-negative integer (got {p['context']!r})")
        if "x" in p:
            choice(f"{where}.x", p["x"], ("iteration", "samples", "queries"))
        if "y" in p:
            choice(f"{where}.y", p["y"], PLOT_Y)
        out.append(p)
    return out


def _policy(value, where: str) -> dict | None:
    """``policy: mlp`` or ``policy: {kind: mlp, hidden: [32, 32]}`` → {"kind": ..., "hidden": [...]}."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict) or set(value) - {"kind", "hidden"} or "kind" not in value:
        raise InputError(f"{where} must be one of {', '.join(POLICIES)} or a mapping {{kind: mlp, hidden: [32]}} (got {value!r})")
    choice(f"{where}", value["kind"], POLICIES)
    if "hidden" in value:
        h = value["hidden"]
        if value["kind"] != "mlp":
            raise InputError(f"{where}.hidden applies to kind: mlp only")
        if not isinstance(h, list) or not h or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in h):
            raise InputError(f"{where}.hidden must be a non-empty list of positive layer widths (got {h!r})")
        weights = sum(a * b for a, b in zip(h, h[1:]))  # the hidden-to-hidden layers; parameters, gradients, Adam's two moments
        check_memory(where, f"an MLP with {weights:.3g} hidden-layer weights", 4 * 8.0 * weights)
    return dict(value)


def _label(name: str, cfg, swept: list[str], point: dict, given: str | None) -> tuple[str, str]:
    """(label, base): the base is the user's label or name-mode; swept fields are appended."""
    base = given or (f"{name}-{cfg.mode}" if hasattr(cfg, "mode") else name)
    keys = [k for k in swept if k not in ("name", "label")]
    return base + ("(" + ",".join(f"{k}={point[k]}" for k in keys) + ")" if keys else ""), base


def parse_spec(data: object, source: str = "<spec>", base: Path | None = None) -> Spec:
    base = base or Path.cwd()
    if not isinstance(data, dict):
        raise InputError(f"spec {source}: must be a mapping with keys problems, algorithms, seeds, iterations")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise InputError(f"spec {source}: unknown field(s) {unknown}; expected some of {sorted(TOP_KEYS)}")
    try:
        return _parse(data, source, base)
    except InputError as e:
        raise InputError(f"spec {source}: {e}") from None


def _parse(data: dict, source: str, base: Path) -> Spec:
    if "problem" in data and "problems" in data:
        raise InputError("give either 'problem' or 'problems', not both")
    raw_problems = data.get("problems", [data["problem"]] if "problem" in data else None)
    if raw_problems is None:
        raise InputError("missing field 'problems' (a list of problem entries)")
    if not isinstance(raw_problems, list) or not raw_problems:
        raise InputError("problems must be a non-empty list of problem entries")
    problems: dict[str, TabularBandit | PreferenceBandit] = {}
    entries: dict[str, dict] = {}
    for i, entry in enumerate(raw_problems):
        where = f"problems[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where} must be a mapping like {{kind: tabular, family: random}} (got {entry!r})")
        try:
            points, swept = _grid(entry)
        except InputError as e:
            raise InputError(f"{where}.{e}") from None
        built = [(point, *_problem(point, where, base)) for point in points]
        if len({p.name for _, p, _ in built}) < len(built):  # the swept fields must tell them apart
            for point, problem, resolved in built:
                suffix = ",".join(f"{k}={point[k]}" for k in swept if k != "name")
                problem.name = resolved["name"] = f"{problem.name}({suffix})"
        for _, problem, resolved in built:
            if ":" in problem.name:  # run ids are problem:label:sN
                raise InputError(f"{where}.name: {problem.name!r} contains ':', which separates the parts of a run id; "
                                 "set 'name' to one without it")
            if problem.name in problems:
                raise InputError(f"{where}: problem name {problem.name!r} is used twice; set 'name' to tell them apart")
            problems[problem.name], entries[problem.name] = problem, resolved

    algos = data.get("algorithms")
    if not isinstance(algos, list) or not algos:
        raise InputError("algorithms must be a non-empty list like [{name: rebel, eta: 1}]")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_memory("seeds", f"{seeds:.3g} runs", seeds * ROW_BYTES)  # before the list of seeds is built
        seeds = list(range(positive_int("seeds", seeds)))
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InputError(f"seeds must be a positive count or a list of non-negative integers (got {data.get('seeds')!r})")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must not repeat (got {seeds})")
    if "iterations" not in data:
        raise InputError("missing field 'iterations' (a positive integer)")
    iterations = positive_int("iterations", data["iterations"])
    eval_every = positive_int("eval_every", data.get("eval_every", 1))
    check_memory("iterations", f"{iterations // eval_every + 1:.3g} metric rows per run (iterations / eval_every)",
                 ROW_BYTES * (iterations // eval_every + 1))
    plot = _plots(data.get("plot"))
    trajectories = data.get("trajectories", False)
    if not isinstance(trajectories, bool):
        raise InputError(f"trajectories must be true or false (got {trajectories!r})")
    if any(p["kind"] == "simplex" for p in plot) and not trajectories:
        raise InputError("plot.kind simplex needs 'trajectories: true' (it draws the saved trajectories)")

    ALGORITHMS = on_track("bandit")
    configs = []
    for i, entry in enumerate(algos):
        where = f"algorithms[{i}]"
        entry = spec_entry(entry)  # {module: mypkg.mod:MyRule, ...}: a user's rule
        if not isinstance(entry, dict) or "name" not in entry:
            raise InputError(f"{where} must be a mapping with a 'name' (one of {', '.join(ALGORITHMS)})")
        choice(f"{where}.name", entry["name"], tuple(ALGORITHMS))
        if "label" in entry and not isinstance(entry["label"], str):
            raise InputError(f"{where}.label must be a string (got {entry['label']!r})")
        try:
            points, swept = _grid(entry)
        except InputError as e:
            raise InputError(f"{where}.{e}") from None
        unread = []  # a field unread at every point of the entry is refused; one a swept point reads is not
        for point in points:
            params = {k: v for k, v in point.items() if k not in ("name", "label", "policy", "iterations")}
            params, shown = spec_params(params, base) if point["name"] == "user" else (params, point["name"])
            its = positive_int(f"{where}.iterations", point["iterations"]) if "iterations" in point else iterations
            cls = ALGORITHMS[point["name"]]
            for f in dataclasses.fields(cls.Config):  # file fields are relative to the spec file
                v = params.get(f.name)
                if f.metadata.get("check") == "path" and isinstance(v, str) and v and not Path(v).is_absolute():
                    params[f.name] = str((base / v).resolve())
            try:
                cfg = build_config(cls.Config, params, where, "bandit")
            except UnreadField as e:
                unread.append(e)
                cfg = build_config(cls.Config, params, where, "bandit", check_unread=False)
            dim = max(getattr(p, "features", np.empty((1, 1, 1))).shape[-1] for p in problems.values())
            for fname, items in cls.items_per_iteration(cfg):
                check_memory(f"{where}.{fname}", f"{items:.3g} drawn items per iteration", items * ITEM_BYTES * dim)
            why = cls.check_track(cfg, "bandit")
            if why:
                raise InputError(f"{where}: {why}")
            policy = _policy(point.get("policy"), f"{where}.policy")
            label, base_label = _label(shown, cfg, swept, point, entry.get("label"))
            configs.append((point["name"], (label, base_label), cfg, {k: point[k] for k in swept}, policy, where, its))
        everywhere = set.intersection(*(set(e.messages) for e in unread)) if len(unread) == len(points) else set()
        if everywhere:
            raise InputError(unread[0].messages[sorted(everywhere)[0]])
    labels = [c[1][0] for c in configs]
    for (_, (label, _), _, _, _, where, _) in configs:
        if ":" in label:  # run ids are problem:label:sN
            raise InputError(f"{where}.label: {label!r} contains ':', which separates the parts of a run id; "
                             "set 'label' to one without it")
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise InputError(f"algorithms: label(s) {dup} name more than one configuration; add 'label' to tell them apart")

    runs = []
    for pname, (aname, (label, base_label), cfg, swept, policy, where, its), seed in itertools.product(
            problems, configs, seeds):
        problem = problems[pname]
        kind = (policy or {}).get("kind") or default_kind(problem)
        check_pairing(ALGORITHMS[aname], problem, f"{where} ({label})", cfg)
        try:  # the policy/problem/algorithm pairing, checked before any work
            initial_policy(problem, **(policy or {}))
        except InputError as e:
            raise InputError(f"{where}.policy: {e}") from None
        why = ALGORITHMS[aname].check_policy(cfg, kind)
        if why:
            raise InputError(f"{where}.policy: {kind!r} cannot be used here: {why}")
        if seed == seeds[0]:
            try:
                ALGORITHMS[aname].check_problem(cfg, problem)
            except InputError as e:
                raise InputError(f"{where} on problem {pname!r}: {e}") from None
        runs.append(RunPlan(f"{pname}:{label}:s{seed}", pname, aname, label, base_label, dataclasses.asdict(cfg), swept,
                            policy, seed, its, eval_every, trajectories))
    ids = [r.run_id for r in runs]
    if len(set(ids)) < len(ids):  # cannot happen after the checks above; refuse rather than overwrite a run
        raise InputError(f"run ids {sorted({i for i in ids if ids.count(i) > 1})} are not unique")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise InputError(f"name must be a non-empty string (got {name!r})")
    return Spec(name, runs, problems, entries, plot, source, _tune(data.get("tune"), seeds), data)


def _tune(value, seeds: list[int]) -> dict | None:
    """``tune: {seeds: N | [s, ...]}``: the tuning seeds, disjoint from the reporting ``seeds`` (a count N
    takes the N seeds after the largest reporting seed)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"seeds"} or "seeds" not in value:
        raise InputError(f"tune must be a mapping {{seeds: 3}} or {{seeds: [100, 101, 102]}} (got {value!r})")
    t = value["seeds"]
    if isinstance(t, int) and not isinstance(t, bool):
        t = list(range(max(seeds) + 1, max(seeds) + 1 + positive_int("tune.seeds", t)))
    if not isinstance(t, list) or not t or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in t) \
            or len(set(t)) != len(t):
        raise InputError(f"tune.seeds must be a positive count or a list of distinct non-negative integers (got {t!r})")
    if set(t) & set(seeds):
        raise InputError(f"tune.seeds {sorted(set(t) & set(seeds))} are also reporting seeds; the tuning seeds must be "
                         "fresh (disjoint from 'seeds')")
    return {"seeds": t}


def spec_file(path: str | Path) -> Path:
    """``path`` as a Path if it is a file; else a one-line InputError (missing, or a folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file {str(path)!r} " + ("is a folder, not a YAML spec file" if path.is_dir()
                                                        else "does not exist"))
    return path


def load_spec(path: str | Path, overrides=()) -> Spec:
    """A spec file, with ``key=value`` overrides applied (:mod:`testbed.experiments.overrides`)."""
    from testbed.experiments.overrides import apply_overrides

    path = spec_file(path)
    data = read_yaml(path, "spec")
    return parse_spec(apply_overrides(data, overrides, TOP_KEYS) if overrides else data, str(path), path.parent)


def dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj)), sort_keys=False)
