"""Package-level checks: no tensorflow needed, docstring examples run."""

import doctest
import importlib
import os
import sys
import textwrap

import pytest

from common import REPO, run_command

SCRIPT = textwrap.dedent("""
    import sys

    class NoTensorflow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("tensorflow is blocked in this test")

    sys.meta_path.insert(0, NoTensorflow())
    import numpy as np
    import uvim_keras.metrics as metrics

    for name in metrics.__all__:
        getattr(metrics, name)
    cats = [{"id": 1, "name": "a", "isthing": 1}]
    gt = np.zeros((1, 4, 4, 2), np.int32)
    gt[0, :2] = (1, 1)
    pq = metrics.PanopticQuality(cats)
    pq.update_state(gt, gt)
    depth = metrics.DepthMetrics()
    depth.update_state(np.ones((1, 4, 4)), np.ones((1, 2, 2)))
    fid = metrics.FID(feature_extractor=lambda x: x)
    fid.update_state(real_features=np.eye(3), generated_features=np.eye(3))
    print(pq.result()["All"]["pq"], depth.result()["RMSE"],
          round(fid.result(), 9), "tensorflow" in sys.modules)
""")


def test_import_without_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join(
                   [str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = run_command([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, timeout=120)
    assert out.stdout.split()[-4:] == ["1.0", "0.0", "0.0", "False"]


@pytest.mark.parametrize("module", [
    "categories", "panoptic_quality", "depth", "fid", "two_channel",
    "coco_panoptic_io", "inception_features"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"uvim_keras.metrics.{module}")
    failures, _ = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert failures == 0
