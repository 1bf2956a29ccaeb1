"""``--backend ray``: a sweep run as Ray tasks writes the same bytes as a serial run; bad input is one line.

The cluster is real and offline: ``ray start --head --block`` on loopback in a subprocess, joined with
``--ray-address 127.0.0.1:PORT`` (the path a user's cluster takes); a second Ray run starts a private
local instance (``--backend ray --jobs 2``, no address). Both are compared byte for byte with
``--jobs 1``, and no Ray process outlives its test.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from testbed.cli import main
from testbed.experiments import backends

SPEC = """
name: raymini
problems: [{kind: tabular, family: random, contexts: 3, actions: 3, seed: 1}]
algorithms:
  - {name: rebel, mode: sampled, pairs: 20, eta: 1.0}
  - {name: ppo, batch: 40, minibatch: 20, beta: 0.01}
seeds: 3
iterations: 4
eval_every: 2
"""
FILES = ("config.yaml", "metrics.csv", "policies.npz", "meta.json")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}  # offline, and nothing written to ~/.ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes() -> set[int]:
    """PIDs of Ray processes of this environment (raylet, gcs_server, workers…), from /proc."""
    pids = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if sys.prefix in cmd and ("ray" in cmd.split(sys.prefix, 1)[1][:80] or "raylet" in cmd or "gcs_server" in cmd):
            pids.add(int(d.name))
    return pids - {os.getpid()}


def assert_no_new_ray_processes(before: set[int], timeout: float = 20.0) -> None:
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + timeout
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left running: {sorted(left)}"


@pytest.fixture(scope="module")
def ray_env():
    """Ray's environment for this module: offline, no auth token in ~/.ray, and its session folders (logs,
    sockets) in a short private temp dir that is removed afterwards instead of piling up in /tmp/ray."""
    tmp = tempfile.mkdtemp(prefix="rt-")  # short: Ray's socket paths must fit in 107 characters
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {**RAY_ENV, "RAY_TMPDIR": tmp}.items():
                mp.setenv(k, v)
            mp.delenv("RAY_ADDRESS", raising=False)
            yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_env, tmp_path_factory):
    """A one-node Ray cluster on loopback; yields its address; stopped (by its own pid) afterwards."""
    before = ray_processes()
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    cmd = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
           "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
           "--include-dashboard", "false", "--disable-usage-stats"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, f"ray start failed:\n{log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: ray start stops every process it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert_no_new_ray_processes(before)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    (tmp / "spec.yaml").write_text(SPEC)
    assert main(["run", str(tmp / "spec.yaml"), "--out", str(tmp / "j1"), "--quiet", "--jobs", "1"]) == 0
    return tmp


def spy_on_ray(monkeypatch) -> list:
    """Record each call of the Ray path, so a test knows the tasks did go through Ray."""
    calls, real = [], backends._ray
    monkeypatch.setattr(backends, "_ray", lambda fn, args, on_done: calls.append(len(args)) or real(fn, args, on_done))
    return calls


def assert_same_bytes(a: Path, b: Path) -> None:
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_cluster_gives_the_bytes_of_a_serial_run(cluster, serial, monkeypatch):
    calls = spy_on_ray(monkeypatch)
    out = serial / "ray-cluster"
    assert main(["run", str(serial / "spec.yaml"), "--out", str(out), "--quiet", "--backend", "ray",
                 "--ray-address", cluster, "--no-batch"]) == 0
    assert calls == [6]  # 2 algorithms x 3 seeds, one Ray task each (and the serial run stacked the seeds)
    assert_same_bytes(serial / "j1", out)


def test_ray_local_instance_gives_the_bytes_of_a_serial_run(ray_env, serial, monkeypatch):
    before = ray_processes()
    calls = spy_on_ray(monkeypatch)
    out = serial / "ray-local"
    assert main(["run", str(serial / "spec.yaml"), "--out", str(out), "--quiet", "--backend", "ray", "--jobs", "2"]) == 0
    assert calls == [4]  # each algorithm's stack of 3 seeds split in 2 for 2 workers
    assert_same_bytes(serial / "j1", out)
    import ray

    assert not ray.is_initialized()  # it shut down the instance it started…
    assert_no_new_ray_processes(before)  # …and every process of it


def test_map_tasks_on_the_cluster_keeps_order_and_raises_the_tasks_own_error(cluster):
    import ray

    with backends.backend_session("ray", address=cluster):  # one connection for the three sweeps
        done = []
        assert backends.map_tasks(math.sqrt, [(16.0,), (4.0,), (9.0,)], "ray", on_done=done.append) == [4.0, 2.0, 3.0]
        assert sorted(done) == [0, 1, 2]
        assert os.getpid() not in backends.map_tasks(os.getpid, [(), ()], "ray")  # ran in Ray workers, not here
        with pytest.raises(ValueError, match="math domain error") as e:
            backends.map_tasks(math.sqrt, [(4.0,), (-1.0,)], "ray")
        assert type(e.value) is ValueError  # the task's own exception, not Ray's wrapper
        assert ray.is_initialized()  # map_tasks left the session it did not open
    assert not ray.is_initialized()


def test_local_backend_keeps_order_and_reports_each_task():
    done = []
    assert backends.map_tasks(math.sqrt, [(16.0,), (4.0,), (9.0,)], "local", on_done=done.append) == [4.0, 2.0, 3.0]
    assert done == [0, 1, 2]  # the process pool (--jobs 2) is tested in test_study.py


def bad(tmp_path, capsys, *flags, command="run") -> str:
    (tmp_path / "spec.yaml").write_text(SPEC)
    argv = (["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "o"), "--quiet"] if command == "run"
            else ["reproduce", "--quiet", "--experiments", str(tmp_path), "--runs", str(tmp_path / "runs"),
                  "--figures", str(tmp_path / "figs")])
    assert main(argv + list(flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: ") and err.count("\n") == 1, err
    assert not any(p.name != "spec.yaml" for p in tmp_path.iterdir())  # wrote nothing (no run folder, no .partial)
    return err


@pytest.mark.parametrize("command", ["run", "reproduce"])
@pytest.mark.parametrize("flags, expected", [
    (("--backend", "dask"), ("--backend", "invalid choice", "local", "ray")),
    (("--backend", "ray", "--ray-address", "nonsense"), ("--ray-address", "HOST:PORT")),
    (("--backend", "ray", "--ray-address", "127.0.0.1:99999"), ("--ray-address", "HOST:PORT")),
    (("--ray-address", "127.0.0.1:6379"), ("--ray-address needs --backend ray",)),
])
def test_bad_backend_flags_are_one_line(tmp_path, capsys, flags, expected, command):
    err = bad(tmp_path, capsys, *flags, command=command)
    assert all(s in err for s in expected), err


def test_ray_not_installed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    err = bad(tmp_path, capsys, "--backend", "ray")
    assert 'pip install "rebel-testbed[ray]"' in err


def test_bad_ray_address_env_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "nonsense")
    assert "RAY_ADDRESS" in bad(tmp_path, capsys, "--backend", "ray")


def test_unreachable_cluster_is_one_line_exit_2_in_a_real_process(ray_env, tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "spec.yaml", "--out", "o", "--backend", "ray",
                           "--ray-address", address], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--ray-address '{address}': no Ray head node answers there" in proc.stderr
    assert time.perf_counter() - t0 < 60  # fails fast (Ray alone would retry for many minutes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
