"""The one exception type for bad user input.

Anything a user can get wrong (a spec field, an instance file, a CLI argument) raises
:class:`InputError` with a one-line message that names the bad field and the expected form.
The CLI turns it into ``testbed: error: <message>`` and exit code 2; every other exception is
an internal error (exit code 1).
"""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Bad user input: the message names the field and what was expected."""


def check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} must be finite (found NaN or inf)")


def check_shape(name: str, a: np.ndarray, shape: tuple[int, ...], form: str) -> None:
    if a.shape != shape:
        raise InputError(f"{name} must have shape {form} = {shape} (got {a.shape})")


def check_distribution(name: str, p: np.ndarray, atol: float = 1e-8) -> None:
    """Rows along the last axis must be probability vectors."""
    check_finite(name, p)
    if np.any(p < 0):
        raise InputError(f"{name} must be non-negative probabilities (min {p.min():.3g})")
    s = p.sum(axis=-1)
    if not np.allclose(s, 1.0, rtol=0.0, atol=atol):
        bad = float(np.ravel(s)[np.argmax(np.abs(np.ravel(s) - 1))])
        raise InputError(f"{name} must sum to 1 along its last axis (got a sum of {bad:.6g})")


def positive_number(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number (got {v!r})")
    return float(v)


def nonneg_number(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
        raise InputError(f"{name} must be a non-negative number (got {v!r})")
    return float(v)


def positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(f"{name} must be a positive integer (got {v!r})")
    return int(v)


def nonneg_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(f"{name} must be a non-negative integer (got {v!r})")
    return int(v)


def choice(name: str, v: object, options: tuple[str, ...]) -> str:
    if v not in options:
        raise InputError(f"{name} must be one of {', '.join(options)} (got {v!r})")
    return str(v)


def context_and_reference(rho, pi_ref, X: int, Y: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated rho [X] and pi_ref [X, Y] (uniform when None); pi_ref must have full support."""
    rho = np.full(X, 1.0 / X) if rho is None else np.asarray(rho, dtype=np.float64)
    check_shape("rho", rho, (X,), "[X]")
    check_distribution("rho", rho)
    pi_ref = np.full((X, Y), 1.0 / Y) if pi_ref is None else np.asarray(pi_ref, dtype=np.float64)
    check_shape("pi_ref", pi_ref, (X, Y), "[X, Y]")
    check_distribution("pi_ref", pi_ref)
    if np.any(pi_ref <= 0):
        raise InputError("pi_ref must be strictly positive (full support), as KL(pi || pi_ref) needs")
    return rho, pi_ref


GIB = 2.0 ** 30
ROW_BYTES = 2048
"""A metrics row held in memory until the run folder is written (a dict of ~20 numbers): an upper estimate."""


def memory_bytes() -> float | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    import os

    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(where: str, what: str, nbytes: float) -> None:
    """Refuse up front (before anything is allocated) a size that cannot fit in this machine's memory:
    ``what`` says what the estimate ``nbytes`` counts."""
    total = memory_bytes()
    if total is not None and nbytes > total:
        raise InputError(f"{where}: {what} need at least ~{nbytes / GIB:.4g} GiB of memory; this machine has "
                         f"{total / GIB:.1f} GiB")


THREADS_ENV = "TESTBED_TORCH_THREADS"


def env_threads(default: int = 1) -> int:
    """torch intra-op threads asked for by ``$TESTBED_TORCH_THREADS`` (``default`` when unset; 0: torch's own
    default); a bad value is a one-line error."""
    import os

    value = os.environ.get(THREADS_ENV, "").strip() or str(default)
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise InputError(f"{THREADS_ENV} must be a whole number of threads >= 0, 0 for torch's default (got {value!r})")
    return n
