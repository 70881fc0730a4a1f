"""keras.distribution: a DataParallel stage-I step equals the single-device step."""

import json
import os
import subprocess
import sys

import pytest

from common import REPO


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="JAX distribution")
def test_data_parallel_stage1_step_matches_single_device():
    script = REPO / "tests" / "_data_parallel_step.py"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_diff"] <= 1e-5, result["diffs"]
    # The step really changed the weights, the VQ state included.
    vq = [p for p in result["moved"] if p.endswith(("dictionary", "counts"))]
    assert len(vq) == 2 and all(result["moved"][p] > 1e-4 for p in vq), result["moved"]
