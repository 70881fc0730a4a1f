"""uvim_keras.runtime.host_memory: glibc keeps a compiled step's scratch buffer mapped."""

import os
import platform
import sys
import warnings

import pytest

from common import run_json
from uvim_keras.runtime import host_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="reuse_host_memory acts on Linux with glibc only")

# A jitted function whose scratch buffer (two 41 MB temporaries) is larger
# than a worker thread's malloc arena can hold, as a train step's is: the
# page faults of a call (the median of 25) show whether the buffer is mapped
# afresh at each call. (With reuse the heap still grows now and then over
# the first calls, while other allocations settle around the freed buffer;
# a training loop settles within its first steps.)
_PROBE = r"""
import json, resource, sys
if sys.argv[1] == "reuse":
    from uvim_keras.runtime.host_memory import reuse_host_memory
    assert reuse_host_memory()
import jax, jax.numpy as jnp
x = jnp.ones((2500, 4096), jnp.float32)
f = jax.jit(lambda x: (jnp.sin(x)[::-1] * jnp.cos(x)).T.sum(0))
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
f(x).block_until_ready()
faults = []
for _ in range(25):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults.sort()
print(json.dumps({"temp_bytes": temp, "faults_per_call": faults[len(faults) // 2]}))
"""


def _probe(mode):
    env = {k: v for k, v in os.environ.items() if k not in host_memory.HOST_MEMORY_ENV}
    env["JAX_PLATFORMS"] = "cpu"
    return run_json([sys.executable, "-c", _PROBE, mode], env=env, timeout=300)


@pytest.mark.slow
@glibc_only
def test_step_buffer_is_not_faulted_in_again():
    default = _probe("default")
    pages = default["temp_bytes"] / 4096
    if default["faults_per_call"] < 0.5 * pages:  # e.g. transparent huge pages always on
        pytest.skip(f"glibc's defaults fault only {default['faults_per_call']:.0f} pages a "
                    f"call of {pages:.0f} here: nothing to measure")
    # glibc's default maps the buffer afresh at every call; reuse_host_memory
    # keeps it: (almost) no page faults per call.
    reuse = _probe("reuse")
    assert reuse["faults_per_call"] < 0.02 * pages, (reuse, default)


@pytest.fixture
def unapplied(monkeypatch):
    """host_memory as in a fresh process: not applied, no MALLOC_* variables."""
    monkeypatch.setattr(host_memory, "_applied", False)
    for key in host_memory.HOST_MEMORY_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_refuses_after_jax_started(unapplied):
    unapplied.setattr(host_memory, "_jax_started", lambda: True)
    if host_memory._glibc() is None:
        assert host_memory.reuse_host_memory() is False
        return
    with pytest.warns(UserWarning, match="before the first JAX computation"):
        assert host_memory.reuse_host_memory() is False


def test_not_glibc_is_a_no_op(unapplied):
    unapplied.setattr(host_memory.platform, "system", lambda: "Darwin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host_memory.reuse_host_memory() is False


def test_environment_variables_count_as_applied(unapplied):
    unapplied.setattr(host_memory, "_jax_started", lambda: True)  # too late for mallopt
    for key, value in host_memory.HOST_MEMORY_ENV.items():
        unapplied.setenv(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host_memory.reuse_host_memory() is True
