"""Memory of converting a full-size checkpoint (a measurement, `large`).

    python -m pytest -m large -s tests/test_presets_large.py

Writes a synthetic big_vision stage-I `.npz` with the official panoptic
shapes (random values), converts it with `uvim-keras convert` in a fresh
process and reports that process's peak RSS and time. Converting must not
hold more than about two copies of the weights at once.
"""

import json
import os
import sys

import pytest

from common import REPO, last_json_line, run_command, run_json

pytestmark = pytest.mark.large

_WRITE = r"""
import json, sys, zipfile
import numpy as np
from uvim_keras.checkpoints import big_vision as convert
from uvim_keras.presets import PRESETS
cfg = PRESETS["panoptic_coco_stage1"].stage1_config
model = convert.stage1_from_big_vision_config(cfg)
shapes = {name: tuple(v.shape) for name, v in convert.stage1_variable_map(model).items()}
del model
rng = np.random.default_rng(0)
total = 0
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED, allowZip64=True) as z:
    for name, shape in sorted(shapes.items()):
        a = rng.standard_normal(shape, dtype=np.float32)
        if name == "state/counts":
            a = np.abs(a) + 0.5
        with z.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, a, allow_pickle=False)
        total += a.nbytes
print(json.dumps({"bytes": total, "arrays": len(shapes)}))
"""

_CONVERT = r"""
import json, resource, sys, time
t0 = time.time()
import keras, keras_hub  # imports first: their memory is not the conversion's
from uvim_keras.cli import main
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.time()
rc = main(["convert", "--task", "panoptic", "--stage1", sys.argv[1], "-o", sys.argv[2]])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rc": rc, "rss_after_imports_kb": base, "peak_rss_kb": peak,
                  "convert_s": time.time() - t1, "total_s": time.time() - t0,
                  "backend": keras.backend.backend()}))
"""


def test_full_size_panoptic_stage1_conversion_memory(tmp_path):
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"),
               TF_CPP_MIN_LOG_LEVEL="3")
    npz = tmp_path / "panoptic_stageI_synthetic.npz"
    sizes = run_json([sys.executable, "-c", _WRITE, npz], env=env, cwd=REPO, timeout=None)
    run = run_command([sys.executable, "-c", _CONVERT, npz, tmp_path / "preset"], env=env,
                      cwd=REPO, timeout=None)
    stats = last_json_line(run.stdout)
    assert stats["rc"] == 0, run.stderr[-3000:]
    weights_mb = sizes["bytes"] / 2**20
    extra_mb = (stats["peak_rss_kb"] - stats["rss_after_imports_kb"]) / 1024
    report = {
        "backend": stats["backend"], "arrays": sizes["arrays"],
        "weights_MiB": round(weights_mb, 1), "npz_MiB": round(os.path.getsize(npz) / 2**20, 1),
        "rss_after_imports_MiB": round(stats["rss_after_imports_kb"] / 1024, 1),
        "peak_rss_MiB": round(stats["peak_rss_kb"] / 1024, 1),
        "peak_minus_imports_MiB": round(extra_mb, 1),
        "copies_of_weights": round(extra_mb / weights_mb, 2),
        "convert_s": round(stats["convert_s"], 1), "process_s": round(stats["total_s"], 1),
        "preset_MiB": round(sum(f.stat().st_size for f in (tmp_path / "preset").iterdir()) / 2**20, 1),
    }
    print("\nfull-size panoptic stage-I conversion:", json.dumps(report))
    assert extra_mb < 2.25 * weights_mb, report
