"""Weights saved under one backend load under the others with equal outputs."""

import os
import sys

import pytest

from common import REPO, run_command

SCRIPT = REPO / "tests" / "_cross_backend.py"


def _run(backend, *args):
    """_cross_backend.py's stdout under `backend` (asserting exit status 0)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return run_command([sys.executable, SCRIPT, *args], env=env, backend=backend,
                       timeout=600).stdout


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                    reason="spawns every backend itself; run once")
@pytest.mark.parametrize("source", ["jax", "torch"])
def test_weights_move_between_backends(tmp_path, source):
    _run(source, "save", str(tmp_path))
    for target in {"jax", "tensorflow", "torch"} - {source}:
        assert _run(target, "check", str(tmp_path)).startswith("ok")
