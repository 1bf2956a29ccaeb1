"""`testbed plot`'s y axis: logarithmic only when every plotted value is positive (a log axis cannot show a
value <= 0; PPO's loss, for one, is often negative), for any --y."""

import shutil

import numpy as np
import pytest

import testbed.plotting.curves as curves
from testbed.cli import main


def _set_column(d, column: str, value_of) -> None:
    """Rewrite one metrics.csv column: ``value_of(algorithm, iteration)``."""
    lines = (d / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    col, alg, it = (header.index(c) for c in (column, "algorithm", "iteration"))
    out = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[col] = repr(value_of(cells[alg], int(cells[it])))
        out.append(",".join(cells))
    (d / "metrics.csv").write_text("\n".join(out) + "\n")


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_run draws (kept after they are saved)."""
    kept = []
    save = curves.save_figure

    def keep(fig, out, tight=True):
        kept.append(fig)
        return save(fig, out, tight)

    monkeypatch.setattr(curves, "save_figure", keep)
    return kept


def _plot(tmp_path, run_folders, capsys, column, value_of, y=None):
    shutil.copytree(run_folders / "bandit", tmp_path / "run1")
    _set_column(tmp_path / "run1", column, value_of)
    assert main(["plot", str(tmp_path / "run1"), "--y", y or column]) == 0, capsys.readouterr().err


def test_negative_ppo_loss_is_drawn_on_a_linear_axis_unclipped(tmp_path, run_folders, capsys, figures):
    _plot(tmp_path, run_folders, capsys, "loss", lambda alg, t: -0.1 - 0.01 * t if alg == "ppo" else 0.2 + t)
    (fig,) = figures
    assert {ax.get_yscale() for ax in fig.axes} == {"linear"}
    ppo = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label().startswith("ppo")]
    assert ppo and all(np.allclose(ln.get_ydata(), -0.1 - 0.01 * ln.get_xdata()) for ln in ppo)  # not 1e-16


def test_an_exact_zero_keeps_the_log_axis_at_the_floor(tmp_path, run_folders, capsys, figures):
    """An exact run that reaches J* logs sub-optimality 0: the convergence rate stays visible on the log axis,
    the 0 drawn at FLOOR (a linear axis flattened every curve of such a figure)."""
    from testbed.plotting.common import FLOOR
    _plot(tmp_path, run_folders, capsys, "suboptimality", lambda alg, t: 0.0 if t == 4 else 1.0 / (1 + t))
    assert {ax.get_yscale() for ax in figures[0].axes} == {"log"}
    assert min(float(np.min(line.get_ydata())) for ax in figures[0].axes for line in ax.get_lines()) == FLOOR


def test_positive_values_keep_the_log_axis(tmp_path, run_folders, capsys, figures):
    _plot(tmp_path, run_folders, capsys, "loss", lambda alg, t: 0.1 / (1 + t))
    assert {ax.get_yscale() for ax in figures[0].axes} == {"log"}
