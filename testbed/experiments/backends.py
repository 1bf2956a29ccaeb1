"""Where a sweep's tasks run: serially, in a local process pool, or on a Ray cluster.

The runner builds a list of independent tasks (one picklable, module-level function and one argument
tuple per grid point) and calls :func:`map_tasks`, which returns the results in input order whatever
the backend. Every task runs with one torch thread and draws only from its own seed, so the results do
not depend on the backend or on ``jobs`` (``tests/test_backends.py`` checks byte-identical outputs).

- ``local``: serial in this process when ``jobs <= 1``, else a ``spawn`` process pool of ``jobs``
  workers (no fork after torch has started threads).
- ``ray``: each task is one ``ray.remote`` call with ``num_cpus=1``. With an address (``--ray-address``
  or the ``RAY_ADDRESS`` environment variable) it joins that cluster, whose CPUs decide how many tasks
  run at once; otherwise it starts a private local instance with ``num_cpus=jobs``. It shuts down only
  what it started (the local instance, or its own connection), never a cluster it joined, and leaves
  a Ray session the caller opened running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from testbed.errors import InputError

BACKENDS = ("local", "ray")
_POOL: ProcessPoolExecutor | None = None  # the open local session's process pool (jobs > 1)
RAY_EXTRA = 'pip install "rebel-testbed[ray]"'
_ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})")


def check_ray_address(address: str, name: str = "--ray-address") -> str:
    """A cluster address is HOST:PORT of the head node (or ray://HOST:PORT for Ray Client)."""
    m = _ADDRESS.fullmatch(address)
    if not m or not 0 < int(m["port"]) < 65536:
        raise InputError(f"{name} must be HOST:PORT of a Ray head node, e.g. 127.0.0.1:6379 (got {address!r})")
    return address


def _root_message(e: BaseException) -> str:
    """The last line of the innermost cause: Ray wraps the useful message (a bad token, say) in a
    ConnectionError around a RuntimeError that quotes a whole traceback."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _reachable(address: str, name: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``address``: Ray itself retries such an address for many minutes."""
    m = _ADDRESS.fullmatch(address)
    host = m["host"].strip("[]")
    try:
        socket.create_connection((host, int(m["port"])), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"{name} {address!r}: no Ray head node answers there ({e.strerror or e})") from None


@contextlib.contextmanager
def backend_session(backend: str, jobs: int = 1, address: str | None = None) -> Iterator[None]:
    """Check ``backend`` and, for Ray, connect (or start a local instance) once for several
    :func:`map_tasks` calls; on exit, shut down only what was started here.

    The CLI opens it before any output is written, so a missing Ray or an unreachable cluster is one
    line and exit 2 (an :class:`InputError`), never a half-made run folder.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend == "local":
        if address:
            raise InputError("--ray-address needs --backend ray")
        global _POOL
        if jobs <= 1 or _POOL is not None:
            yield
            return
        # one process pool for every map_tasks call inside the session (all specs of a reproduce):
        # each worker pays for importing torch once, not once per spec
        _POOL = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            yield
        finally:
            _POOL.shutdown(cancel_futures=True)
            _POOL = None
        return
    name = "--ray-address"
    if address:
        check_ray_address(address)
    elif os.environ.get("RAY_ADDRESS"):
        name = "the RAY_ADDRESS environment variable"
        address = check_ray_address(os.environ["RAY_ADDRESS"], name)
    try:
        import ray
    except ImportError:
        raise InputError(f"--backend ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    if ray.is_initialized():  # the caller's own ray.init(): used as is, and left running
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a sweep sends no usage report
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            if not address.startswith("ray://"):
                _reachable(address, name)
            ray.init(address=address, **quiet)
        else:  # "local": a private instance, never a cluster that happens to run on this machine
            ray.init(address="local", num_cpus=jobs, include_dashboard=False, **quiet)
    except InputError:
        raise
    except Exception as e:  # ConnectionError, RuntimeError, AuthenticationError, ValueError, ...
        ray.shutdown()  # whatever a failed start left behind
        what = f"{name} {address!r}: cannot join the Ray cluster there" if address else \
            "--backend ray: cannot start a local Ray instance"
        raise InputError(f"{what}: {_root_message(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()  # the local instance, or only this driver's connection to a cluster


def _one_thread(fn: Callable, args: tuple) -> Any:
    """Run one task with one torch thread: parallel runs must not oversubscribe the cores, and the
    thread count must not change a result."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def map_tasks(fn: Callable, args_list: Sequence[tuple], backend: str = "local", jobs: int = 1,
              on_done: Callable[[int], None] | None = None, address: str | None = None) -> list:
    """``[fn(*a) for a in args_list]`` run on ``backend``, in input order; ``on_done(i)`` is called as
    task ``i`` finishes (in the calling process).

    ``fn`` must be importable by the workers (a module-level function of an installed package).
    ``address`` (Ray only): the cluster to join; ``None`` falls back to ``RAY_ADDRESS``, then to a new
    local instance of ``jobs`` CPUs (see :func:`backend_session`). A task's exception is re-raised
    here as itself; with Ray the other tasks are then cancelled.
    """
    on_done = on_done or (lambda i: None)
    with backend_session(backend, jobs, address):
        if backend == "ray":
            return _ray(fn, args_list, on_done)
        return _local(fn, args_list, jobs, on_done)


def _local(fn: Callable, args_list: Sequence[tuple], jobs: int, on_done: Callable[[int], None]) -> list:
    if jobs <= 1:
        import torch

        threads = torch.get_num_threads()
        try:
            out = []
            for i, a in enumerate(args_list):
                out.append(_one_thread(fn, a))
                on_done(i)
            return out
        finally:
            torch.set_num_threads(threads)
    pool = _POOL  # the session's spawn pool (no fork after torch has started threads)
    futures = [pool.submit(_one_thread, fn, a) for a in args_list]
    for i, fut in enumerate(futures):
        fut.add_done_callback(lambda _f, i=i: on_done(i))
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        raise


def _ray(fn: Callable, args_list: Sequence[tuple], on_done: Callable[[int], None]) -> list:
    import ray

    task = ray.remote(num_cpus=1, max_retries=0)(_one_thread)
    refs = [task.remote(fn, a) for a in args_list]
    index = {ref: i for i, ref in enumerate(refs)}
    out: list = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                try:
                    out[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the task's own exception, not Ray's wrapper
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                on_done(i)
        return out
    finally:
        for ref in pending:  # a failure or Ctrl-C leaves nothing of ours running on a shared cluster
            ray.cancel(ref)
