"""keras.distribution model parallelism: `uvim_keras.models.sharding`.

The fit-step comparison runs `_model_parallel_step.py` in a subprocess with 8
virtual CPU devices (the device count must be set before JAX starts).
"""

import os
import sys

import pytest

from common import REPO, run_json

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="JAX distribution"
)

M = "model"
QKV = [None, M, None]
OUT = [M, None, None]
MLP_IN = [M, None]  # MLP kernels are (out, in): the mlp_dim axis is sharded
MLP_OUT = [None, M]


def _attention(prefix):
    return {
        **{f"{prefix}/{p}/kernel": QKV for p in ("query", "key", "value")},
        f"{prefix}/attention_output/kernel": OUT,
    }


def _mlp(prefix):
    return {f"{prefix}/dense_0/kernel": MLP_IN, f"{prefix}/dense_1/kernel": MLP_OUT}


# Every sharded variable of the tiny models (1 block each); all others replicated.
EXPECTED = {
    "stage1": {
        **_attention("oracle/transformer/block_0/attention"),
        **_mlp("oracle/transformer/block_0/mlp"),
        **_attention("base_model/transformer/block_0/attention"),
        **_mlp("base_model/transformer/block_0/mlp"),
        "quantizer/dictionary": [M, None],
    },
    "lm": {
        **_attention("guiding_code_lm/encoder/block_0/attention"),
        **_mlp("guiding_code_lm/encoder/block_0/mlp"),
        **_attention("guiding_code_lm/decoder_block_0/self_attention"),
        **_attention("guiding_code_lm/decoder_block_0/cross_attention"),
        **_mlp("guiding_code_lm/decoder_block_0/mlp"),
    },
}


@pytest.fixture(scope="module")
def step_result():
    script = REPO / "tests" / "_model_parallel_step.py"
    return run_json([sys.executable, script], timeout=900,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
@pytest.mark.parametrize("model", ["stage1", "lm"])
def test_model_parallel_step_matches_single_device(step_result, model):
    r = step_result[model]
    assert r["max_diff"] <= 1e-5, r["diffs"]
    # One step moved the weights (key biases get no gradient: softmax is
    # invariant to them), the VQ state included.
    still = [p for p, d in r["moved"].items() if d <= 1e-5 and not p.endswith("key/bias")]
    assert not still, still
    if model == "stage1":
        assert {"quantizer/dictionary", "quantizer/counts"} <= set(r["moved"])
        assert r["moved"]["quantizer/dictionary"] > 1e-4
        assert r["moved"]["quantizer/counts"] > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("model", ["stage1", "lm"])
def test_variables_have_the_intended_sharding(step_result, model):
    r = step_result[model]
    expected = EXPECTED[model]
    for when in ("created", "after_step"):
        specs = r[when]
        assert set(expected) <= set(specs), sorted(set(expected) - set(specs))
        for path, spec in specs.items():
            want = expected.get(path, [None] * len(spec))
            assert spec == want, (when, path, spec, want)
    # Optimizer slots follow their (trainable) variables.
    slots = r["optimizer"]
    for path, spec in expected.items():
        if path == "quantizer/dictionary":  # non-trainable: EMA, no slot
            continue
        slot = [s for s in slots if s.endswith(path.replace("/", "_") + "_momentum")]
        assert len(slot) == 1 and slots[slot[0]] == spec, (path, slot)


@pytest.mark.slow
def test_helpers_and_divisibility(step_result):
    assert step_result["data_parallel_mesh"] == [8]
    assert step_result["inferred_mesh"] == [2, 4]
    # 2 heads on a 4-way model axis.
    error = step_result["strict_error"]
    assert error and "attention/query/kernel" in error and "not divisible" in error, error
    assert len(step_result["lenient_warnings"]) == 12  # q, k, v, out x 3 attentions
    for path, spec in step_result["lenient_specs"].items():
        if path.endswith("/kernel") and "attention" in path:
            assert spec == [None] * len(spec), (path, spec)
        if path.endswith("mlp/dense_0/kernel"):
            assert spec == MLP_IN, (path, spec)


# -- in-process: the layout map's keys -----------------------------------------------
def test_layout_map_matches_paths_with_any_prefix():
    import keras

    from uvim_keras.models.sharding import uvim_layout_map

    mesh = keras.distribution.DeviceMesh(
        (1, 1), ["batch", "model"], keras.distribution.list_devices()[:1]
    )
    layout_map = uvim_layout_map(mesh)
    cases = {
        "oracle/transformer/block_3/attention/query/kernel": QKV,
        "uvim/lm/guiding_code_lm/decoder_block_11/cross_attention/value/kernel": QKV,
        "guiding_code_lm/decoder_block_0/self_attention/attention_output/kernel": OUT,
        "base_model/transformer/block_0/mlp/dense_0/kernel": MLP_IN,
        "guiding_code_lm/encoder/block_23/mlp/dense_1/kernel": MLP_OUT,
        "quantizer/dictionary": [M, None],
        "uvim/stage1/quantizer/dictionary": [M, None],
        # replicated
        "quantizer/counts": None,
        "oracle/transformer/block_0/attention/query/bias": None,
        "oracle/transformer/block_0/mlp/dense_0/bias": None,
        "guiding_code_lm/logits/kernel": None,
        "guiding_code_lm/token_embedding/embeddings": None,
        "oracle/head/kernel": None,
        "other_quantizer/dictionary_v2": None,
    }
    for path, want in cases.items():
        layout = layout_map[path]
        got = None if layout is None else list(layout.axes)
        assert got == want, (path, got, want)


def test_bad_arguments():
    import keras

    from uvim_keras.models.sharding import model_parallel, uvim_layout_map

    mesh = keras.distribution.DeviceMesh((1,), ["batch"], keras.distribution.list_devices()[:1])
    with pytest.raises(ValueError, match="model_axis"):
        uvim_layout_map(mesh)
    n = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match="devices"):
        model_parallel(shape=(n + 1, 1))
    with pytest.raises(ValueError, match="2 entries"):
        model_parallel(shape=(1, 1, 1))


@pytest.mark.slow
def test_layout_map_covers_the_composite_uvim():
    """UViM = LM + stage-I model: exactly both models' sharded variables."""
    import keras

    from helpers import tiny_lm, tiny_stage1
    from uvim_keras import UViM
    from uvim_keras.models.sharding import uvim_layout_map

    keras.utils.clear_session()
    uvim = UViM.from_stage1(tiny_lm(), tiny_stage1())
    mesh = keras.distribution.DeviceMesh(
        (1, 1), ["batch", "model"], keras.distribution.list_devices()[:1]
    )
    layout_map = uvim_layout_map(mesh)
    sharded = {
        v.path: list(layout_map[v.path].axes)
        for v in uvim.weights
        if layout_map[v.path] is not None
    }
    assert sharded == {**EXPECTED["stage1"], **EXPECTED["lm"]}
