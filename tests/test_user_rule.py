"""The user-rule plug-in (testbed/algorithms/user.py): an edited rule file runs its new code in the same process; a
broken rule or a bad override is one line naming the rule, exit 2, nothing written."""

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import testbed
from testbed.cli import main
from testbed.results import read_metrics

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
RULE = re.search(r"```python\n(# my_rules.py.*?)```", README, re.S).group(1)


def _run(tmp_path, name):
    spec = {"problems": [{"kind": "tabular", "family": "random", "contexts": 5, "actions": 4, "seed": 0}],
            "algorithms": [{"module": f"{tmp_path / 'my_rules.py'}:MyRebel", "eta": 1}], "iterations": 4}
    out = testbed.run(spec, tmp_path / name)
    return [r["suboptimality"] for r in read_metrics(out)], (Path(out) / "config.yaml").read_text()


def test_an_edited_rule_file_runs_its_new_code_in_the_same_process(tmp_path):
    """A notebook edits its rule between two runs: the second run is the edited code's, and config.yaml records the
    hash of the file that ran."""
    import hashlib

    (tmp_path / "my_rules.py").write_text(RULE)
    moving, config1 = _run(tmp_path, "a")
    assert moving[-1] < moving[0]
    (tmp_path / "my_rules.py").write_text(RULE.replace("(theta + step)", "(theta + 0 * step)"))  # no longer moves
    still, config2 = _run(tmp_path, "b")
    np.testing.assert_allclose(still, still[0], rtol=0, atol=1e-12)
    assert still != moving
    digest = hashlib.sha256((tmp_path / "my_rules.py").read_bytes()).hexdigest()
    assert digest in config2 and digest not in config1


ODD = '''
import sys
import numpy as np


class Ok:
    family, eta = "mirror_descent", 1.0

    def update(self, api, p, rng):
        return p


class InitRaises(Ok):
    def __init__(self):
        raise ValueError("boom")


class InitExits(Ok):
    def __init__(self):
        sys.exit(0)


class Exits(Ok):
    def update(self, api, p, rng):
        raise SystemExit(0)


class KindsStr(Ok):
    kinds = "tabular"


class BadKind(Ok):
    kinds = ("tabular", "frobnicate")


class WrongShape(Ok):
    def update(self, api, p, rng):
        return np.zeros(3)
'''


def _odd(tmp_path, rule: str) -> str:
    (tmp_path / "odd.py").write_text(ODD)
    (tmp_path / "exit_at_import.py").write_text("raise SystemExit(0)\n")
    return f"{tmp_path / ('exit_at_import.py' if rule == 'AtImport' else 'odd.py')}:{rule}"


BROKEN = [("Exits", "raised SystemExit(0)"), ("InitExits", "raised SystemExit(0)"), ("AtImport", "raised SystemExit(0)"),
          ("InitRaises", "making the rule failed (ValueError: boom)"), ("KindsStr", "kinds must be a non-empty tuple"),
          ("BadKind", "kinds lists unknown 'frobnicate'"), ("WrongShape", "update returned shape (3,)")]


@pytest.mark.parametrize("command,rule,expect", [(c, r, e) for c in ("check", "run") for r, e in BROKEN
                                                 if (c, r) != ("check", "WrongShape")])  # check: a failed row
def test_a_broken_user_rule_is_one_line_naming_it_exit_2_nothing_written(tmp_path, capsys, command, rule, expect):
    """A rule that exits (in update, in its constructor, at import), whose constructor raises, whose kinds are a string
    or unknown, or that returns the wrong shape: one line naming file:Class, exit 2, no run folder and no .partial
    (the next plain run into the same --out is not blocked)."""
    target = _odd(tmp_path, rule)
    if command == "check":
        argv = ["check", target]
    else:
        spec = {"problems": [{"kind": "tabular", "contexts": 6, "actions": 4}], "seeds": 2, "iterations": 3,
                "algorithms": [{"name": "rebel", "mode": "exact"}, {"module": target}]}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        argv = ["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and target.rsplit("/", 1)[1] in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


DECLARES = '''
class Declares:
    family, eta, epochs, flip, mode = "mirror_descent", 1.0, 1, False, "pi"
    param_checks = {"eta": "positive"}

    def update(self, api, p, rng):
        return p
'''


@pytest.mark.parametrize("rule,override,expect", [
    ("PopulationREBEL", "eta=abc", "takes a finite number for 'eta', like its default 1.0 (got 'abc')"),
    ("PopulationREBEL", "eta=.inf", "takes a finite number for 'eta'"),
    ("PopulationREBEL", "eta=.nan", "takes a finite number for 'eta'"),
    ("PopulationREBEL", "eta=true", "takes a finite number for 'eta'"),
    ("PopulationREBEL", "epochs=1.5", "takes a finite integer for 'epochs'"),
    ("Declares", "mode=3", "takes a string for 'mode'"),
    ("Declares", "flip=1", "takes true or false for 'flip'"),
    ("Declares", "eta=-1", "must be a positive number (got -1)"),
])
def test_a_user_rules_overrides_are_checked_against_its_defaults(tmp_path, capsys, rule, override, expect):
    """An override must have the type of the rule's own default (a finite number, not a bool, for a number), and pass
    what the rule declares in param_checks: one line naming the rule, exit 2, nothing written."""
    shutil.copy(Path(__file__).with_name("conformance_mutants.py"), tmp_path / "my_rules.py")
    (tmp_path / "declares.py").write_text(DECLARES)
    target = f"{'declares.py' if rule == 'Declares' else 'my_rules.py'}:{rule}"
    spec = {"problems": [{"kind": "tabular", "contexts": 6, "actions": 4}], "iterations": 3,
            "algorithms": [{"name": "rebel", "mode": "exact"}, {"module": target}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = ["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet", f"algorithms.1.{override}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and target in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_user_rule_without_declared_checks_takes_any_finite_eta(tmp_path):
    """eta = -1 is the user's business unless the rule declares param_checks (no positivity is invented)."""
    shutil.copy(Path(__file__).with_name("conformance_mutants.py"), tmp_path / "my_rules.py")
    spec = {"problems": [{"kind": "tabular", "contexts": 6, "actions": 4}], "iterations": 2,
            "algorithms": [{"module": f"{tmp_path / 'my_rules.py'}:PopulationREBEL", "eta": -1}]}
    assert len(read_metrics(testbed.run(spec, tmp_path / "out"))) == 3


def test_a_rule_file_imports_a_sibling_module(tmp_path, capsys):
    """The rule file's folder is on sys.path while it is imported, so `from my_rules import MyRebel` beside it works
    from any working directory."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "my_rules.py").write_text(RULE)
    (tmp_path / "rules" / "derived.py").write_text("from my_rules import MyRebel\n\n\nclass Derived(MyRebel):\n"
                                                    "    name = 'derived'\n")
    spec = {"problems": [{"kind": "tabular", "contexts": 5, "actions": 4}], "iterations": 2,
            "algorithms": [{"module": f"{tmp_path / 'rules' / 'derived.py'}:Derived"}]}
    rows = read_metrics(testbed.run(spec, tmp_path / "out"))
    assert {r["algorithm"] for r in rows} == {"derived"}
    assert str(tmp_path / "rules") not in sys.path  # only while importing


def test_the_readme_notebook_example_keeps_two_user_rules_apart(tmp_path):
    """The README's notebook line groups by the curve's label: two user rules at the same eta stay two groups (both
    have name == "user")."""
    readme_line = re.search(r"^df\[df\.iteration == 50\]\.(groupby\(.*?\))\.suboptimality\.mean\(\)", README, re.M)
    (tmp_path / "my_rules.py").write_text(RULE + "\n\nclass Slow(MyRebel):\n    name = 'slow'\n\n"
                                          "    def update(self, api, params, rng):\n"
                                          "        return (params + super().update(api, params, rng)) / 2\n")
    spec = {"problems": [{"kind": "tabular", "contexts": 5, "actions": 4}], "iterations": 50,
            "algorithms": [{"name": "npg", "eta": 1}, {"module": f"{tmp_path / 'my_rules.py'}:MyRebel", "eta": 1},
                           {"module": f"{tmp_path / 'my_rules.py'}:Slow", "eta": 1}]}
    df = testbed.load(testbed.run(spec, tmp_path / "out"))
    assert readme_line, "README lost its notebook example"
    final = eval(f"df[df.iteration == 50].{readme_line.group(1)}.suboptimality.mean()", {}, {"df": df})  # noqa: S307
    assert len(final) == 3 and final.nunique() >= 2, final
