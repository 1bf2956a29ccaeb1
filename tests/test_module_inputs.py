"""A ``{module: file.py:Rule}`` entry's source is an input of the run: its sha256 is in config.yaml's ``inputs`` (so
``--resume`` and ``--reuse`` notice an edited rule), on the bandit and LM tracks."""

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from testbed.cli import main

TESTS = Path(__file__).parent


def _inputs(out: Path) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text()).get("inputs", {})


def test_a_bandit_user_rule_file_is_hashed_into_the_run(tmp_path):
    shutil.copy(TESTS / "conformance_mutants.py", tmp_path / "my_rules.py")
    spec = {"problems": [{"kind": "tabular", "family": "random", "contexts": 4, "actions": 3, "seed": 0}],
            "algorithms": [{"module": "my_rules.py:PopulationREBEL"}], "seeds": 1, "iterations": 2}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rule = (tmp_path / "my_rules.py").resolve()
    assert _inputs(tmp_path / "out")[str(rule)] == hashlib.sha256(rule.read_bytes()).hexdigest()


def test_an_lm_user_rule_file_is_hashed_into_the_run(tmp_path):
    pytest.importorskip("transformers")
    from llm_helpers import toy_spec

    shutil.copy(TESTS / "lm_rules.py", tmp_path / "my_lm_rules.py")
    raw = toy_spec({"module": "my_lm_rules.py:LMRebel"}, iterations=1, batch=8, minibatch=8)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rule = (tmp_path / "my_lm_rules.py").resolve()
    assert _inputs(tmp_path / "out")[str(rule)] == hashlib.sha256(rule.read_bytes()).hexdigest()
