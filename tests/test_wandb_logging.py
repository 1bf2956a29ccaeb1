"""`--log wandb` (offline): every metric row reaches the W&B run under the metrics.csv names, and the run
folder is the same with or without it. Skipped without wandb (the `tools` extra installs it)."""

import csv
import json
import zlib
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from test_researcher_workflow import _spec  # noqa: E402

from testbed.cli import main  # noqa: E402

BLOCK, HEADER = 32768, 7  # the .wandb file: ":W&B", a 2-byte magic and a version byte, then LevelDB-log records


def _records(path: Path) -> list[bytes]:
    """The payloads of a LevelDB-format log (W&B's transaction log): 7-byte record headers (checksum, length,
    type: 1 full, 2 first, 3 middle, 4 last; the CRC-32 covers the type byte and the data) in 32 KiB blocks
    whose tails of < 7 bytes are padding."""
    data, pos, out, part = path.read_bytes(), HEADER, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == int.from_bytes(data[pos:pos + 4], "little"), pos
        part += chunk
        pos += 7 + length
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def _history(logdir: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    (path,) = logdir.glob("wandb/offline-run-*/run-*.wandb")
    rows, kinds = [], []
    for payload in _records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        kinds.append(rec.WhichOneof("record_type"))
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    assert kinds[-1] == "exit", f"the transaction log ends with {kinds[-1]!r}: not flushed when the command returned"
    return rows


def test_wandb_history_equals_metrics_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = _spec(tmp_path, [{"name": "rebel", "mode": "sampled", "pairs": 30, "eta": [0.5, 2]},
                            {"module": "my_rules.py:PopulationREBEL"}])
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--log", "wandb"]) == 0
    logged = {}
    for h in _history(tmp_path / "out.logs"):
        (run_id,) = {k.rsplit("/", 1)[0] for k in h if not k.startswith("_")}
        logged[(run_id, h[f"{run_id}/iteration"])] = {k.rsplit("/", 1)[1]: v for k, v in h.items() if k.startswith(run_id)}
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(logged) == len(rows) == 3 * 2 * 9  # 3 configurations x 2 seeds x iterations 0..8
    compared = 0
    for r in rows:
        got = logged[(r["run_id"], int(r["iteration"]))]
        for k, v in r.items():
            if k in ("run_id", "problem", "algorithm", "seed", "iteration"):
                continue
            if v == "":
                assert k not in got, (r["run_id"], k)
            else:
                assert got[k] == float(v), (r["run_id"], k)  # JSON doubles: exact
                compared += 1
    assert compared > 2 * len(rows)
    assert main(["run", str(spec), "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    assert (tmp_path / "plain" / "metrics.csv").read_bytes() == (tmp_path / "out" / "metrics.csv").read_bytes()
