"""Weights saved under one backend load under the others with equal outputs."""

import os
import subprocess
import sys

import pytest

from common import REPO

SCRIPT = REPO / "tests" / "_cross_backend.py"


def _run(backend, *args):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{backend}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                    reason="spawns every backend itself; run once")
@pytest.mark.parametrize("source", ["jax", "torch"])
def test_weights_move_between_backends(tmp_path, source):
    _run(source, "save", str(tmp_path))
    for target in {"jax", "tensorflow", "torch"} - {source}:
        assert _run(target, "check", str(tmp_path)).startswith("ok")
