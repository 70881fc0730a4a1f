"""Keras' own machinery on UViM's models: `quantize` reaches every transformer
kernel in one call and the quantized models predict, save and load (`.keras`
and presets); `enable_lora` adapts the attention query/value projections,
only the LoRA kernels train, and the adapted model saves and loads."""

import warnings

import numpy as np
import pytest

from common import to_numpy
from helpers import panoptic_batch, randomize, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend


def _uvim():
    from uvim_keras import UViM

    lm, stage1 = tiny_lm(), tiny_stage1()
    randomize(lm, 1)
    randomize(stage1, 2)
    return UViM.from_stage1(lm, stage1)


def _projections(model):
    """Every transformer projection (attention and MLP) of a model."""
    import keras

    return [layer for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.EinsumDense)]


def _quantize(model, mode="int8"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize(mode)
    return [str(w.message) for w in caught]


@pytest.mark.slow
def test_int8_reaches_every_transformer_kernel_of_uvim_in_one_call(tmp_path):
    import keras

    uvim = _uvim()
    images = panoptic_batch(3, seed=4)["image"]
    projections = _projections(uvim)
    # LM encoder (4 + 2) and decoder (4 + 4 + 2) blocks, oracle and base model (4 + 2 each)
    assert len(projections) == 6 + 10 + 6 + 6
    before = uvim.lm({"image": images, "codes": np.zeros((3, 4), "int32")})
    caught = _quantize(uvim)
    assert not [w for w in caught if "quantize" in w], caught  # no per-layer noise
    assert all(layer.quantization_mode == "int8" for layer in projections)
    assert all(str(layer._kernel.dtype) == "int8" for layer in projections)
    # the heads and embeddings Keras knows how to quantize are quantized too
    assert uvim.lm.logits_dense.quantization_mode == "int8"
    after = uvim.lm({"image": images, "codes": np.zeros((3, 4), "int32")})
    diff = np.abs(to_numpy(after) - to_numpy(before))
    assert 0 < diff.max() < 0.1 * np.abs(to_numpy(before)).max()
    out = uvim.predict(images, verbose=0)
    assert out.shape == (3, 16, 16, 2)

    path = str(tmp_path / "uvim_int8.keras")
    uvim.save(path)
    loaded = keras.saving.load_model(path)
    assert all(layer.quantization_mode == "int8" for layer in _projections(loaded))
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), out)
    np.testing.assert_allclose(
        to_numpy(loaded.lm({"image": images, "codes": np.zeros((3, 4), "int32")})),
        to_numpy(after), atol=1e-6)


@pytest.mark.slow
def test_quantized_uvim_preset_round_trip(tmp_path):
    from uvim_keras import UViM, UViMStage1

    uvim = _uvim()
    images = panoptic_batch(2, seed=5)["image"]
    _quantize(uvim)
    expected = uvim.predict(images, verbose=0)
    uvim.save_to_preset(str(tmp_path / "int8"))
    loaded = UViM.from_preset(str(tmp_path / "int8"))
    assert all(layer.quantization_mode == "int8" for layer in _projections(loaded))
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    stage1 = UViMStage1.from_preset(str(tmp_path / "int8"))
    assert all(layer.quantization_mode == "int8" for layer in _projections(stage1))


@pytest.mark.slow
def test_quantize_the_parts_alone_and_twice_is_a_clear_error():
    lm, stage1 = tiny_lm(), tiny_stage1()
    for model in (lm, stage1):
        _quantize(model)
        assert all(layer.quantization_mode == "int8" for layer in _projections(model))
        with pytest.raises(ValueError, match="already quantized"):
            model.quantize("int8")
    batch = panoptic_batch(2)
    assert to_numpy(stage1.encode(batch)).shape == (2, 4)
    assert to_numpy(lm.generate(batch["image"])).shape == (2, 4)


@pytest.mark.slow
def test_float8_where_the_backend_has_it():
    lm = tiny_lm()
    randomize(lm, 3)
    images = panoptic_batch(2)["image"]
    codes = np.zeros((2, 4), "int32")
    before = to_numpy(lm({"image": images, "codes": codes}))
    try:
        _quantize(lm, "float8")
    except (NotImplementedError, TypeError, ValueError) as e:  # backend without float8 dots
        pytest.skip(f"float8 not available here: {e}")
    assert all(layer.quantization_mode == "float8" for layer in _projections(lm))
    after = to_numpy(lm({"image": images, "codes": codes}))
    assert np.abs(after - before).max() < 0.2 * np.abs(before).max()


@pytest.mark.slow
def test_lora_trains_only_query_value_factors_and_saves_merged(tmp_path):
    import keras

    lm = tiny_lm()
    randomize(lm, 4)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    codes = rng.integers(0, 8, (4, 4)).astype("int32")
    frozen = {v.path: to_numpy(v) for v in lm.weights}
    adapted = lm.enable_lora(2)
    # query and value of the encoder attention, decoder self- and cross-attention
    assert sorted(p.rsplit("/", 1)[-1] for p in adapted) == ["query"] * 3 + ["value"] * 3
    names = sorted(v.path.rsplit("/", 1)[-1] for v in lm.trainable_weights)
    assert names == ["lora_kernel_a"] * 6 + ["lora_kernel_b"] * 6
    before = to_numpy(lm({"image": images, "codes": codes}))
    lm.compile(optimizer=keras.optimizers.Adam(0.05))
    lm.fit({"image": images, "codes": codes}, epochs=3, batch_size=4, verbose=0)
    after = to_numpy(lm({"image": images, "codes": codes}))
    assert np.abs(after - before).max() > 1e-3  # fit changed the outputs
    for v in lm.weights:  # ... through the LoRA factors only
        if "lora" not in v.path:
            np.testing.assert_array_equal(to_numpy(v), frozen[v.path], err_msg=v.path)

    path = str(tmp_path / "lm_lora.keras")
    lm.save(path)  # merged kernels
    loaded = keras.saving.load_model(path)
    assert not any(getattr(layer, "lora_enabled", False) for layer in loaded._flatten_layers())
    np.testing.assert_allclose(to_numpy(loaded({"image": images, "codes": codes})), after,
                               atol=1e-5)
    with pytest.raises(ValueError, match="already enabled"):
        lm.enable_lora(2)


def test_lora_on_stage1_and_its_keras_hub_backbone():
    pytest.importorskip("keras_hub")
    from uvim_keras.keras_hub_models import UViMStage1Backbone

    stage1 = tiny_stage1()
    adapted = stage1.enable_lora(4)
    assert len(adapted) == 4  # query and value of the oracle's and the base model's block
    assert all("lora_kernel" in v.path for v in stage1.trainable_weights)
    backbone = UViMStage1Backbone.from_stage1(tiny_stage1())
    backbone.enable_lora(4)  # keras-hub's own method
    names = {v.path.rsplit("/", 1)[-1] for v in backbone.trainable_weights}
    assert names == {"lora_kernel_a", "lora_kernel_b"}
    assert len(backbone.trainable_weights) == 8


@pytest.mark.parametrize("rank", [0, 1.5])
def test_bad_lora_arguments_are_clear_errors(rank):
    with pytest.raises(ValueError, match=rf"rank={rank!r}: expected a positive integer"):
        tiny_lm().enable_lora(rank)
    with pytest.raises(ValueError, match=r"no EinsumDense layer is named \['qkv'\]"):
        tiny_lm().enable_lora(2, target_layer_names=["qkv"])
