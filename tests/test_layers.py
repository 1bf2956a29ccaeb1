"""The package's layers are executable: import-linter's contracts (pyproject.toml) hold, and a planted
upward import breaks them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the copy at cwd, not the installed package
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "3 kept, 0 broken" in r.stdout


def test_a_planted_upward_import_breaks_the_layers(tmp_path):
    shutil.copytree(ROOT / "testbed", tmp_path / "testbed", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    losses = tmp_path / "testbed" / "losses.py"
    losses.write_text(losses.read_text() + "\nfrom testbed.experiments import runner  # noqa: E402,F401\n")
    plotting = tmp_path / "testbed" / "plotting" / "common.py"
    plotting.write_text(plotting.read_text() + "\nimport torch  # noqa: E402,F401\n")
    r = lint(tmp_path)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "testbed.losses -> testbed.experiments" in r.stdout  # the layer that was crossed
    assert "testbed.plotting.common -> torch" in r.stdout       # plotting must not import torch
    assert "1 kept, 2 broken" in r.stdout
