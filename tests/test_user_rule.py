"""The user-rule plug-in (testbed/algorithms/user.py) in one process: an edited rule file runs its new code."""

import re
from pathlib import Path

import numpy as np

import testbed
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
