"""Every case of the bad-input table (tests/bad_inputs.py, issue 17 items 7-9) is clean: exit 2, one line
``testbed: error: ...`` naming the field, no traceback, nothing written — in the bandit, preference and LM
command lines. A representative few also run in the real interpreter."""

from __future__ import annotations

import pytest
from bad_inputs import CASES, census, classify, listing, make_run_folder, write_files

from testbed.cli import main

LM = [k for k, c in CASES.items() if c.track == "lm"]


def _run(tmp_path, monkeypatch, capsys, cid):
    case = CASES[cid]
    if case.track == "lm":
        pytest.importorskip("transformers")
    if case.setup == "run":
        make_run_folder(tmp_path)
        capsys.readouterr()
    write_files(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    rc = main(list(case.argv))
    cap = capsys.readouterr()
    return classify(rc, cap.out, cap.err, case, before, listing(tmp_path)), cap.err


@pytest.mark.parametrize("cid", list(CASES))
def test_bad_input_is_one_clean_line(tmp_path, monkeypatch, capsys, cid):
    verdict, err = _run(tmp_path, monkeypatch, capsys, cid)
    assert verdict == "clean", f"{cid}: {verdict}: {err!r} (expected the words {CASES[cid].expect})"


def test_the_table_spans_the_three_command_lines():
    tracks = {c.track for c in CASES.values()}
    assert tracks == {"bandit", "preference", "lm"} and len(CASES) >= 40


@pytest.mark.parametrize("cid", ["file-is-null", "npz-complex-rewards", "plot-panel-by-bogus", "lm-dtype-int8"])
def test_bad_input_in_the_real_interpreter(cid):
    assert census([cid], timeout=120)[cid] == "clean"
