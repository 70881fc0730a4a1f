"""keras.distribution: a DataParallel stage-I step equals the single-device step."""

import os
import sys

import pytest

from common import REPO, run_json


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="JAX distribution")
def test_data_parallel_stage1_step_matches_single_device():
    script = REPO / "tests" / "_data_parallel_step.py"
    result = run_json([sys.executable, script], timeout=600,
                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result["max_diff"] <= 1e-5, result["diffs"]
    # The step really changed the weights, the VQ state included.
    vq = [p for p in result["moved"] if p.endswith(("dictionary", "counts"))]
    assert len(vq) == 2 and all(result["moved"][p] > 1e-4 for p in vq), result["moved"]


def test_models_give_their_layout_map_like_keras_hub_backbones():
    """`get_layout_map` (keras-hub's backbone method) on each model: the
    sharding rules of `models.sharding`, found by variable path."""
    import keras

    from uvim_keras import GuidingCodeLM, UViM, UViMStage1
    from uvim_keras.models.sharding import uvim_layout_map

    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
                                         keras.distribution.list_devices()[:1])
    expected = uvim_layout_map(mesh)
    for cls in (UViM, UViMStage1, GuidingCodeLM):
        layout_map = cls.get_layout_map(mesh)
        assert isinstance(layout_map, keras.distribution.LayoutMap)
        assert list(layout_map.keys()) == list(expected.keys())
        query = layout_map["uvim/lm/decoder_block_0/self_attention/query/kernel"]
        assert tuple(query.axes) == (None, "model", None)
        assert layout_map["uvim/stage1/oracle/patch_stem/kernel"] is None
