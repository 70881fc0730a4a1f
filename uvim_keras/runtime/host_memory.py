"""Reuse host memory between training steps (Linux with glibc).

On CPU, JAX (XLA's CPU runtime) takes each call's scratch buffer for a
compiled step from `malloc` on one of its worker threads. glibc's malloc
serves a block that large (over 32 MB, and always over 64 MB in a worker
thread's arena) with a fresh `mmap` and unmaps it on `free`, so every step
faults the whole buffer in again, page by page (big_vision's steps pay the
same).

`reuse_host_memory()` sets glibc's malloc to keep freed memory for reuse:
one arena for all threads, no `mmap` for large blocks and no trimming of the
heap, so the next step finds its buffer already mapped. The price: memory
the process frees is kept for its own reuse (its resident size stays at its
peak), and threads share one malloc arena, so malloc-heavy multi-threaded
work such as compiling slows down. It pays off in long runs whose step
buffers are large (training at real sizes, the benchmarks, the CLI's demo),
which is why it is opt-in: the example training scripts take
`--reuse-host-memory`, `benchmarks/bench_uvim.py` uses it for ours and
big_vision alike. The measurements (page faults and step times with and
without it, on each backend): benchmarks/README.md, "Host memory".

It must run before the backend starts its threads (before the first JAX
computation): a thread keeps the arena it first allocated from. The same
settings for any process, without code, are the environment variables
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`
(`HOST_MEMORY_ENV`), set before Python starts.

Example:
>>> import uvim_keras
>>> from uvim_keras.runtime.host_memory import reuse_host_memory
>>> reuse_host_memory()  # before the first training step
True
"""

import ctypes
import ctypes.util
import os
import platform
import sys
import warnings

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP = 2**31 - 1  # mallopt takes an int: the largest trim threshold

#: The environment variables that make glibc behave as `reuse_host_memory()`
#: sets it, for processes started with them.
HOST_MEMORY_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_KEEP),
}

_applied = False


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _jax_started():
    """Whether JAX has created its backends (and with them their threads)."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def reuse_host_memory():
    """Keeps glibc's malloc from unmapping large freed blocks (see the module).

    Returns True when the settings are in force (set now, by an earlier
    call, or by `HOST_MEMORY_ENV` in the environment), False where they
    cannot be set (not Linux/glibc) or come too late (JAX has started; a
    warning says so).
    """
    global _applied
    if _applied or all(os.environ.get(k) == v for k, v in HOST_MEMORY_ENV.items()):
        _applied = True
        return True
    libc = _glibc()
    if libc is None:
        return False
    if _jax_started():
        warnings.warn(
            "reuse_host_memory() was called after JAX started its threads; "
            "large step buffers will still be unmapped after every step. Call it "
            "before the first JAX computation, or start Python with "
            + " ".join(f"{k}={v}" for k, v in HOST_MEMORY_ENV.items()) + ".",
            stacklevel=2,
        )
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP))
    )
    _applied = ok
    return ok
