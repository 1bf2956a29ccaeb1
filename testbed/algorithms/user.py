"""A user's own update rule as an algorithm: ``algorithms: [{module: mypkg.mod:MyRule, eta: 0.5}]``.

The plug-in point of ``testbed check`` (:mod:`testbed.experiments.conformance`) and of ``testbed run``
is the same object: a class (called with no arguments), a zero-argument factory, or an instance
(deep-copied), with ``update(api, params, rng) -> new params``. The other fields of the spec entry
(``eta``, ``beta``, anything the rule reads) are set as attributes on each fresh rule, so one rule
sweeps like a built-in (``eta: [0.1, 1]``); each value must have the type of the rule's default, and pass what the
rule declares in ``param_checks`` (:func:`check_override`). Optional attributes: ``name`` (the curve's label),
``family`` (which ``testbed check`` battery applies; ``equilibrium`` rules run on preference
problems), ``kinds`` (the policy kinds it updates, default ``("tabular",)``). State a rule keeps on itself
between updates must be data (numbers, arrays, tensors, lists, dicts) for ``testbed run`` to checkpoint it.

``params`` are the policy's parameters: the logits [X, Y] of a tabular softmax policy, theta [d] of a
log-linear one, the flat weight vector of an MLP. :class:`BanditAPI` is all a rule may see of the
problem: sizes, rho, pi_ref, the policy's log-probabilities as a differentiable function of its
parameters, exact tables (population methods) and sampled oracles that count their queries.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from testbed.algorithms.base import Algorithm, Step
from testbed.errors import InputError, nonneg_int, nonneg_number, positive_int, positive_number
from testbed.io import sha256
from testbed.policies import POLICIES, LogLinear, MLPPolicy, Policy, TabularSoftmax
from testbed.problems import PreferenceBandit, TabularBandit

FAMILIES = ("mirror_descent", "equilibrium", "dpo", "sampled")
METHODS = {"update": "update(api, params, rng)", "lm_update": "lm_update(api, query, query_mask)"}
KINDS = (*POLICIES, "lm")
"""What a rule's ``kinds`` may list: the policy kinds, and ``lm`` (the LM back-end, through ``lm_update``)."""


def method_for(kind: str) -> str:
    """The method a rule needs to update a policy of ``kind`` (or to run on the back-end ``kind``)."""
    return "lm_update" if kind == "lm" else "update"


def rule_kinds(rule, where: str = "the rule") -> tuple[str, ...]:
    """The rule's ``kinds`` (default ``("tabular",)``), checked: a non-empty tuple or list of :data:`KINDS`."""
    kinds = getattr(rule, "kinds", ("tabular",))
    if not isinstance(kinds, tuple | list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise InputError(f"{where}: kinds must be a non-empty tuple of {', '.join(KINDS)}, e.g. ('tabular',) "
                         f"(got {kinds!r})")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InputError(f"{where}: kinds lists unknown {', '.join(map(repr, unknown))}; known: {', '.join(KINDS)}")
    return tuple(kinds)


@contextlib.contextmanager
def user_code(where: str):
    """Around a call of the user's code: a SystemExit it raises (``sys.exit()``, ``exit()``) is a one-line input
    error naming ``where``, not the end of ``testbed`` with that exit status (0, nothing printed)."""
    try:
        yield
    except SystemExit as e:
        raise InputError(f"{where} raised SystemExit({e.code!r}) (a rule returns its result; it must not exit)") from e


def _guarded(fn, where: str):
    """``fn()``, user code run while loading a rule: anything it raises is a one-line input error naming ``where``."""
    try:
        with user_code(where):
            return fn()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{where} ({type(e).__name__}: {e})") from None


def missing_method(rule, kind: str) -> str | None:
    """None if ``rule`` has the method ``kind`` needs; else that method's signature."""
    method = method_for(kind)
    return None if callable(getattr(rule, method, None)) else METHODS[method]


class BudgetExceeded(RuntimeError):
    pass


class BanditAPI:
    """What an update rule may see of a problem: sizes, rho, pi_ref, the policy's log-probabilities,
    exact tables, sampled oracles (``queries`` counts every reward or preference query)."""

    def __init__(self, problem: TabularBandit | PreferenceBandit, rng: np.random.Generator,
                 preferences: np.ndarray | None = None, budget: int | None = None, policy: Policy | None = None):
        self._p, self._rng, self._budget = problem, rng, budget
        self._P = problem.preferences if isinstance(problem, PreferenceBandit) else preferences
        self.num_contexts, self.num_actions = problem.num_contexts, problem.num_actions
        self.rho, self.pi_ref = problem.rho.copy(), problem.pi_ref.copy()
        self.policy = policy or TabularSoftmax(np.zeros((self.num_contexts, self.num_actions)))
        self.kind = {TabularSoftmax: "tabular", LogLinear: "loglinear", MLPPolicy: "mlp"}[type(self.policy)]
        self.queries = 0

    def features(self) -> np.ndarray:
        """phi[x, y, d] of a log-linear or MLP policy."""
        return np.array(self.policy.features)

    def log_probs(self, params) -> torch.Tensor:
        """ln pi_params(y|x) [X, Y] as a torch function of the parameters (differentiable if they are)."""
        params = params if isinstance(params, torch.Tensor) else torch.as_tensor(np.asarray(params, dtype=np.float64))
        return self.policy.torch_log_probs(params, np.arange(self.num_contexts))

    def probs(self, params) -> np.ndarray:
        with torch.no_grad():
            return torch.exp(self.log_probs(params)).numpy()

    def reward_table(self) -> np.ndarray:
        if isinstance(self._p, PreferenceBandit):
            raise RuntimeError("a preference problem has no reward table")
        return self._p.rewards.copy()

    def preference_table(self) -> np.ndarray:
        if self._P is None:
            raise RuntimeError("this problem offers no preference table")
        return self._P.copy()

    def sample_contexts(self, n: int) -> np.ndarray:
        return self._p.sample_contexts(self._rng, n)

    def sample(self, params, x: np.ndarray) -> np.ndarray:
        """Responses y ~ pi_params(.|x), one per context in ``x``."""
        return self.policy.with_params(np.asarray(params, dtype=np.float64)).sample(self._rng, np.asarray(x))

    def _count(self, n: int) -> None:
        self.queries += n
        if self._budget is not None and self.queries > self._budget:
            raise BudgetExceeded(f"more than {self._budget} oracle queries in one update")

    def rewards(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._count(len(x))
        return self._p.sample_rewards(self._rng, x, y)

    def preferences(self, x: np.ndarray, y: np.ndarray, y2: np.ndarray) -> np.ndarray:
        """1 where y ≻ y' was observed, else 0 (one Bernoulli(P(y ≻ y'|x)) draw per pair)."""
        self._count(len(x))
        return (self._rng.random(len(x)) < self.preference_table()[x, y, y2]).astype(float)


_DIGESTS: dict[tuple, str] = {}


def _digest(path: Path) -> str:
    """The file's sha256 (16 hex digits), read once per (path, mtime, size): the rule is made at every step, and
    reading and hashing the file each time cost that much per iteration."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256(path)[:16]
    return _DIGESTS[key]


def _import(mod_name: str, where: str):
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise InputError(f"{where}: file {mod_name!r} does not exist")
        # keyed by path and content: an edited file is imported afresh (in a notebook too), so the code that runs is
        # the code whose sha256 the run folder records
        digest = _digest(path)
        name = f"testbed_user_{path.resolve().as_posix().replace('/', '_').replace('.', '_')}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        folder = str(path.resolve().parent)  # the file's own folder, while it runs: it may import a sibling module
        added = folder not in sys.path
        if added:
            sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        finally:
            if added:
                sys.path.remove(folder)
        return module
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module(mod_name)


def load_factory(target: str, where: str = "module", families: tuple[str, ...] | None = None):
    """MODULE:OBJECT (a dotted module, or a path to a .py file) → a zero-argument factory of rules.
    ``families``: the rule's ``family`` must be one of them (``testbed check``)."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise InputError(f"{where} must look like MODULE:OBJECT or path/to/file.py:OBJECT (got {target!r})")
    mod_name, obj_name = target.split(":")
    module = _guarded(lambda: _import(mod_name, where), f"{where} {target!r}: cannot import {mod_name!r}")
    if not hasattr(module, obj_name):
        raise InputError(f"{where}: {mod_name!r} has no object {obj_name!r}")
    obj = getattr(module, obj_name)
    is_factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "update"))
    factory = obj if is_factory else (lambda: copy.deepcopy(obj))
    rule = _guarded(factory, f"{where} {target!r}: making the rule failed")
    rule_kinds(rule, f"{where} {target!r}")
    if not callable(getattr(rule, "update", None)) and not callable(getattr(rule, "lm_update", None)):
        raise InputError(f"{where} {target!r}: the rule needs a method {METHODS['update']} "
                         f"(or {METHODS['lm_update']} for the LM back-end)")
    if families is not None and getattr(rule, "family", None) not in families:
        raise InputError(f"{where} {target!r}: family must be one of {', '.join(families)} "
                         f"(got {getattr(rule, 'family', None)!r})")
    return factory


def module_file(target) -> str | None:
    """The source file of a ``MODULE:OBJECT`` target (a user rule, a reward function), so its hash goes into the run's
    inputs and a resume or ``--reuse`` notices an edited one; None if it has none (a built-in or compiled module)."""
    if not isinstance(target, str) or target.count(":") != 1:
        return None
    mod = target.split(":")[0]
    if mod.endswith(".py"):
        return mod
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return origin if origin and origin.endswith(".py") and Path(origin).is_file() else None


def rule_name(target: str) -> str:
    """The label of a user rule: its ``name`` attribute, else the object's name."""
    return str(getattr(load_factory(target)(), "name", None) or target.rsplit(":", 1)[1])


PARAM_CHECKS = {"positive": positive_number, "nonneg": nonneg_number, "positive_int": positive_int,
                "nonneg_int": nonneg_int}
"""What a rule may declare of its parameters, ``param_checks = {"eta": "positive"}``: checked on every override."""


def check_override(rule, target: str, name: str, value, where: str) -> None:
    """``value`` may replace the rule's attribute ``name``: of its default's type (true or false for a bool, a finite
    number for a number, an integer for an int, a string for a string; other defaults take anything), and what the
    rule declares for it in ``param_checks``. No other rule (e.g. eta > 0) is assumed."""
    default = getattr(rule, name)
    want = None
    if isinstance(default, bool | np.bool_):
        want = None if isinstance(value, bool | np.bool_) else "true or false"
    elif isinstance(default, numbers.Real):
        kind = numbers.Integral if isinstance(default, numbers.Integral) else numbers.Real
        ok = isinstance(value, kind) and not isinstance(value, bool | np.bool_) and math.isfinite(value)
        want = None if ok else f"a finite {'integer' if kind is numbers.Integral else 'number'}"
    elif isinstance(default, str):
        want = None if isinstance(value, str) else "a string"
    if want:
        raise InputError(f"{where}: the rule {target!r} takes {want} for {name!r}, like its default {default!r} "
                         f"(got {value!r})")
    declared = (getattr(rule, "param_checks", None) or {}).get(name)
    if declared is not None:
        if declared not in PARAM_CHECKS:
            raise InputError(f"{where}: the rule {target!r} declares param_checks[{name!r}] = {declared!r}; "
                             f"known: {', '.join(PARAM_CHECKS)}")
        PARAM_CHECKS[declared](f"{where} (the rule {target!r})", value)


@dataclass
class UserConfig:
    module: str = field(default="", metadata={"doc": "MODULE:OBJECT or path/to/file.py:OBJECT of the rule"})
    params: dict | None = field(default=None, metadata={"doc": "attributes set on each fresh rule (eta, beta, ...)"})

    def validate(self, where: str) -> None:
        factory = load_factory(self.module, f"{where}.module")
        self.params = {} if self.params is None else self.params
        if not isinstance(self.params, dict):
            raise InputError(f"{where}: a user rule's parameters must be a mapping (got {self.params!r})")
        rule = factory()
        for k, v in self.params.items():
            if not hasattr(rule, k):
                known = sorted(a for a in dir(rule) if not a.startswith("_") and not callable(getattr(rule, a)))
                raise InputError(f"{where}.{k}: the rule {self.module!r} has no attribute {k!r} (it has {known})")
            check_override(rule, self.module, k, v, f"{where}.{k}")
            try:
                setattr(rule, k, v)
            except AttributeError:
                raise InputError(f"{where}.{k}: the rule {self.module!r} does not take {k!r}") from None


def make_rule(config: UserConfig):
    rule = load_factory(config.module)()
    for k, v in (config.params or {}).items():
        setattr(rule, k, v)
    return rule


class UserRule(Algorithm):
    """A user's update rule from a module (``algorithms: [{module: mypkg.mod:MyRule}]``)."""

    name = "user"
    Config = UserConfig
    summary = "your own update rule: {module: mypkg.mod:MyRule, ...} (the testbed check interface)"
    maturity = "experimental"
    tracks = ("bandit", "lm")
    tests = ("test_a_user_rule_from_a_module_runs_plots_and_tabulates_beside_the_builtins",
             "test_a_user_lm_rule_runs_in_an_lm_spec_beside_rebel")

    def __init__(self, config: UserConfig, problem, rng):
        super().__init__(config, problem, rng)
        self.rule_state = dict(vars(make_rule(config)))  # the rule's own attributes: data, so runs checkpoint
        self.api = None

    @classmethod
    def label(cls, config) -> str:
        return rule_name(config.module)

    @classmethod
    def runs_on(cls, config) -> str:
        return "preference" if getattr(make_rule(config), "family", None) == "equilibrium" else "reward"

    @staticmethod
    def check_policy(config, kind: str) -> str | None:
        kinds = rule_kinds(make_rule(config))
        return None if kind in kinds else f"the rule updates {', '.join(kinds)} policies (its 'kinds')"

    @staticmethod
    def check_track(config, track: str) -> str | None:
        missing = missing_method(make_rule(config), "lm" if track == "lm" else "tabular")
        return None if missing is None else f"the rule {config.module!r} has no method {missing} for the {track} back-end"

    @staticmethod
    def counted(config) -> bool:
        return getattr(make_rule(config), "family", None) == "sampled"

    @staticmethod
    def kl_target(config, problem):
        beta = float((config.params or {}).get("beta", 0.0) or 0.0)
        return (beta, problem.regularised_optimum_log(beta)) if beta > 0 else None

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        if self.api is None:
            self.api = BanditAPI(self.problem, rng, policy=policy)
        before = self.api.queries
        rule = make_rule(self.config)
        vars(rule).update(self.rule_state)
        with user_code(f"user rule {self.config.module!r}: update"):
            new = np.asarray(rule.update(self.api, policy.params, rng), dtype=np.float64)
        self.rule_state = dict(vars(rule))
        if new.shape != np.shape(policy.params):
            raise InputError(f"user rule {self.config.module!r}: update returned shape {new.shape}, "
                             f"expected {np.shape(policy.params)}")
        counted = self.counted(self.config)
        return Step(policy.with_params(new), None, None, self.api.queries - before if counted else None)

    def lm_update(self, q, qm) -> Step:
        """One iteration of the rule's ``lm_update`` through :class:`~testbed.algorithms.user_lm.LMAPI`."""
        from testbed.algorithms.user_lm import lm_update

        rule = make_rule(self.config)
        vars(rule).update(self.rule_state)
        with user_code(f"user rule {self.config.module!r}: lm_update"):
            loss, samples, queries, stats = lm_update(rule, self.ctx, self.config, q, qm)
        self.rule_state = dict(vars(rule))
        return Step(None, loss, samples, queries, stats)


def spec_entry(entry):
    """A spec's ``{module: M:O, ...}`` algorithm entry is the ``user`` algorithm."""
    return {"name": "user", **entry} if isinstance(entry, dict) and "module" in entry and "name" not in entry else entry


def spec_params(params: dict, base: Path) -> tuple[dict, str]:
    """A ``user`` grid point's fields → (its config: module, params; the curve's name). A ``.py`` path is
    relative to the spec file."""
    params = dict(params)
    module = params.pop("module", None)
    if isinstance(module, str) and module.count(":") == 1 and module.split(":")[0].endswith(".py"):
        path, obj = module.split(":")
        module = f"{path if Path(path).is_absolute() else (base / path).as_posix()}:{obj}"
    if isinstance(module, str) and module.count(":") == 1:
        try:
            return {"module": module, "params": params}, rule_name(module)
        except InputError:
            pass  # named by build_config's validation, with the entry's position
    return {"module": module, "params": params}, "user"
