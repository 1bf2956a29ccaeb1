"""Spec files are read strictly (issue 17, items 6-7): a key given twice — at the top or inside an entry —
is refused naming the key and both lines (PyYAML keeps the last value silently); YAML syntax errors
carry their line and column; numbers in scientific notation (``lr: 1e-3``) are numbers in every track."""

import pytest
import yaml

from testbed.cli import main
from testbed.io import read_yaml

BANDIT = """problems: [{kind: tabular, contexts: 3, actions: 3}]
algorithms:
  - name: rebel
    eta: 1.0
    eta: 2.0
iterations: 3
"""


@pytest.mark.parametrize("text,key,line,first", [
    (BANDIT, "eta", 5, 4),
    ("iterations: 3\n" + BANDIT.replace("    eta: 2.0\n", ""), "iterations", 6, 1),
    ("problems: [{kind: tabular, contexts: 3, contexts: 4}]\nalgorithms: [{name: rebel}]\niterations: 2\n",
     "contexts", 1, 1),
])
def test_a_duplicate_key_in_a_bandit_spec_is_refused_with_its_lines(tmp_path, capsys, text, key, line, first):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"duplicate key {key!r}" in err[0] and f"line {line}" in err[0] and f"first at line {first}" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("problems: [{kind: tabular}\nalgorithms: [{name: rebel}]\n")
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "line 2, column" in err[0], err


def test_scientific_notation_is_a_number_and_plain_yaml_is_unchanged(tmp_path):
    p = tmp_path / "a.yaml"
    text = "lr: 1e-3\nb: 2.5E+2\nc: -3e4\nd: 1.0\ne: [1, x, true, null]\nf: '1e-3'\n"
    p.write_text(text)
    got = read_yaml(p, "spec")
    assert got == {"lr": 1e-3, "b": 250.0, "c": -3e4, "d": 1.0, "e": [1, "x", True, None], "f": "1e-3"}
    assert {k: v for k, v in yaml.safe_load(text).items() if k not in ("lr", "b", "c")} == \
        {k: v for k, v in got.items() if k not in ("lr", "b", "c")}


def test_the_lm_spec_reads_1e_minus_3_as_a_learning_rate_and_refuses_duplicates(tmp_path, capsys):
    pytest.importorskip("transformers")
    from llm_helpers import toy_spec

    from testbed.llm.spec import load_lm_spec

    raw = toy_spec({"name": "rebel"})
    text = yaml.safe_dump(raw, sort_keys=False).replace("lr: 0.01", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (tmp_path / "lm.yaml").write_text(text)
    assert load_lm_spec(tmp_path / "lm.yaml").train.lr == 1e-3
    (tmp_path / "dup.yaml").write_text(text + "seeds: [1]\n")
    rc = main(["llm", "run", str(tmp_path / "dup.yaml"), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "duplicate key 'seeds'" in err[0], err
