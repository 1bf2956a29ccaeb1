"""Run ids are unambiguous (issue 17, item 2): they are problem:label:sN, so a ':' in a problem name or a
label could make two runs share an id and one run's policy overwrite another's (exit 0, data lost).
Such names are refused up front with one line naming the field; nothing is written."""

import pytest

from testbed.cli import main

COLLIDING = """
problems:
  - {kind: tabular, contexts: 3, actions: 3, seed: 0, name: "p:x"}
  - {kind: tabular, contexts: 3, actions: 3, seed: 1, name: p}
algorithms:
  - {name: rebel, eta: 1.0, label: y}
  - {name: rebel, eta: 2.0, label: "x:y"}
iterations: 3
"""


@pytest.mark.parametrize("spec,field", [
    (COLLIDING, "problems[0].name"),
    (COLLIDING.replace('name: "p:x"', "name: q"), "algorithms[1].label"),
])
def test_a_colon_in_a_problem_name_or_label_is_refused(tmp_path, capsys, spec, field):
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and field in err[0] and "':'" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_every_run_keeps_its_own_policy(tmp_path):
    """Without colons the four runs of the spec above have four ids and four stored policies."""
    import numpy as np

    path = tmp_path / "s.yaml"
    path.write_text(COLLIDING.replace('name: "p:x"', "name: px").replace('label: "x:y"', "label: xy"))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    with np.load(tmp_path / "out" / "policies.npz") as z:
        runs = {k.split("/")[0] for k in z.files}
    assert len(runs) == 4
