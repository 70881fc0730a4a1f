"""The layout-independent pieces behind the fast train steps: flax-order
LayerNorm equals Keras' LayerNormalization, the MLP ((out, in) kernels)
equals `Dense` layers holding the transposed kernels, the attention equals
Keras' `MultiHeadAttention` with the same weights, and every task's label
encoding and loss give the same values in patch layout (B, G, c, P) as in
image layout (B, H, W, c)."""

import re

import numpy as np
import pytest

from common import to_numpy

pytestmark = pytest.mark.multibackend


def test_layer_norm_equals_keras_layer_normalization_and_round_trips():
    import keras

    from uvim_keras.layers.transformer import LayerNorm

    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 5, 32)).astype("float32")
    ours = LayerNorm(epsilon=1e-6)
    ours.build(x.shape)
    ours.gamma.assign(np.linspace(0.5, 2.0, 32).astype("float32"))
    ours.beta.assign(np.linspace(-1.0, 1.0, 32).astype("float32"))
    theirs = keras.layers.LayerNormalization(epsilon=1e-6)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(theirs(x)), atol=2e-5)
    clone = LayerNorm.from_config(ours.get_config())
    clone.build(x.shape)
    clone.set_weights(ours.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(ours(x)))


def _randomize(layer, rng):
    for v in layer.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))


def test_mlp_block_equals_dense_layers_with_transposed_kernels_and_round_trips(tmp_path):
    import keras

    from uvim_keras.layers import MlpBlock

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    mlp = MlpBlock(mlp_dim=7, name="mlp")
    mlp.build(x.shape)
    assert isinstance(mlp.dense_0, keras.layers.EinsumDense)
    assert tuple(mlp.dense_0.kernel.shape) == (7, 12)  # (out, in)
    assert tuple(mlp.dense_1.kernel.shape) == (12, 7)
    _randomize(mlp, rng)
    d0, d1 = keras.layers.Dense(7), keras.layers.Dense(12)
    d0.build(x.shape)
    d1.build((2, 5, 7))
    d0.set_weights([to_numpy(mlp.dense_0.kernel).T, to_numpy(mlp.dense_0.bias)])
    d1.set_weights([to_numpy(mlp.dense_1.kernel).T, to_numpy(mlp.dense_1.bias)])
    expected = d1(keras.activations.gelu(d0(x), approximate=True))
    np.testing.assert_allclose(to_numpy(mlp(x)), to_numpy(expected), rtol=1e-5, atol=1e-5)

    clone = MlpBlock.from_config(mlp.get_config())
    clone.build(x.shape)
    clone.set_weights(mlp.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(mlp(x)))

    model = keras.Sequential([keras.Input((5, 12)), mlp])
    path = str(tmp_path / "mlp.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_attention_equals_keras_multi_head_attention_and_round_trips(tmp_path):
    """Same projections, kernel layouts and maths as Keras' own layer."""
    import keras

    from uvim_keras.layers import MultiHeadDotProductAttention

    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 5, 16)).astype("float32")
    v = rng.normal(size=(2, 7, 12)).astype("float32")
    ours = MultiHeadDotProductAttention(num_heads=4)
    ours.build(q.shape, v.shape)
    _randomize(ours, rng)
    theirs = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4)
    theirs(q, v)
    by_name = {f"{layer}/{w}": var for layer in ("query", "key", "value", "attention_output")
               for w, var in (("kernel", getattr(ours, layer).kernel),
                              ("bias", getattr(ours, layer).bias))}
    for var in theirs.weights:
        var.assign(to_numpy(by_name["/".join(var.path.split("/")[-2:])]))
    np.testing.assert_allclose(to_numpy(ours(q, v)), to_numpy(theirs(q, v)), rtol=1e-5, atol=1e-5)

    clone = MultiHeadDotProductAttention.from_config(ours.get_config())
    clone.build(q.shape, v.shape)
    clone.set_weights(ours.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(q, v)), to_numpy(ours(q, v)))


@pytest.mark.parametrize("adapt", ["float", "lora", "int8"])
def test_mlp_decoding_path_equals_its_call(adapt):
    """The decoding loop's MLP (kernels transposed once per call for more
    than one row, as stored for one) gives what the layer gives, LoRA
    merged; quantized projections run as they are."""
    import warnings

    from uvim_keras.layers import MlpBlock

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 1, 16)).astype("float32")
    mlp = MlpBlock(mlp_dim=24)
    mlp.build(x.shape)
    _randomize(mlp, rng)
    if adapt == "lora":
        mlp.dense_0.enable_lora(2)
        lora_b = mlp.dense_0.lora_kernel_b
        lora_b.assign(rng.normal(size=tuple(lora_b.shape)).astype("float32"))
    if adapt == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for layer in (mlp.dense_0, mlp.dense_1):
                layer.quantize("int8")
    kernels = mlp.decoding_kernels(rows=3)
    assert (kernels is None) == (adapt == "int8")
    assert mlp.decoding_kernels(rows=1) is None  # one row: the kernels as stored
    np.testing.assert_allclose(to_numpy(mlp.decode(x, kernels)), to_numpy(mlp(x)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mlp_dim=0), r"mlp_dim=0: expected a positive integer"),
    (dict(mlp_dim=2.5), r"mlp_dim=2.5: expected a positive integer"),
])
def test_mlp_bad_arguments_are_clear_errors(kwargs, match):
    from uvim_keras.layers import MlpBlock

    with pytest.raises(ValueError, match=match):
        MlpBlock(**kwargs)


@pytest.mark.parametrize("num_heads", [0, -3, 2.5])
def test_attention_bad_num_heads_is_a_clear_error(num_heads):
    from uvim_keras.layers import MultiHeadDotProductAttention

    with pytest.raises(ValueError, match=rf"num_heads={num_heads!r}: expected a positive integer"):
        MultiHeadDotProductAttention(num_heads)


def test_big_vision_layout_view_transposes_mlp_kernels():
    from uvim_keras.checkpoints.big_vision import BigVisionLayout, variable_map
    from helpers import tiny_lm

    lm = tiny_lm()
    views = {n: v for n, v in variable_map(lm).items() if isinstance(v, BigVisionLayout)}
    # every MLP kernel (encoder and decoder, both projections), nothing else
    assert len(views) == 2 * (len(lm.encoder.blocks) + len(lm.decoder_blocks))
    assert all(re.search(r"/(MlpBlock_0|MLP)/Dense_[01]/kernel$", n) for n in views)
    name, view = sorted(views.items())[0]
    value = np.arange(np.prod(view.shape), dtype="float32").reshape(view.shape)
    view.assign(value)
    np.testing.assert_array_equal(to_numpy(view.variable), value.T)
    np.testing.assert_array_equal(view.numpy(), value)
    assert view.shape == tuple(reversed(tuple(view.variable.shape)))


def _tasks():
    import sys

    from common import REPO
    from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask

    sys.path.insert(0, str(REPO / "examples"))
    from custom_task_semantic import SemanticSegmentationTask

    rng = np.random.default_rng(0)
    shape = (2, 8, 8)
    panoptic = np.stack([rng.integers(0, 5, shape), rng.integers(0, 4, shape)], -1)
    return [
        (PanopticTask(num_classes=5, max_instances=4), panoptic.astype("int32")),
        (DepthTask(bins=16, min_depth=0.0, max_depth=4.0),
         rng.uniform(0, 4, shape + (1,)).astype("float32")),
        (ColorizationTask(), rng.uniform(-1, 1, shape + (3,)).astype("float32")),
        (SemanticSegmentationTask(num_classes=6, ignore_class=0),
         rng.integers(0, 6, shape + (1,)).astype("int32")),
    ]


@pytest.mark.parametrize("index", range(4))
def test_task_encoding_and_loss_agree_in_both_layouts(index):
    from uvim_keras.layers import patchify

    task, labels = _tasks()[index]
    patch = (4, 4)
    rng = np.random.default_rng(1)
    logits = {k: rng.normal(size=labels.shape[:3] + (c,)).astype("float32")
              for k, c in task.label_channels.items()}
    encoded = task.encode_labels(labels)
    encoded_patches = task.encode_labels(patchify(labels, patch), axis=-2)
    for key in task.label_channels:
        np.testing.assert_allclose(
            to_numpy(encoded_patches[key]), to_numpy(patchify(encoded[key], patch)), atol=1e-6)
    image_loss = task.loss(labels, logits)
    patch_loss = task.loss(patchify(labels, patch),
                           {k: patchify(v, patch) for k, v in logits.items()}, axis=-2)
    np.testing.assert_allclose(float(to_numpy(patch_loss)), float(to_numpy(image_loss)),
                               rtol=1e-5)


def test_unknown_layout_is_a_clear_error():
    from helpers import tiny_stage1

    model = tiny_stage1()
    code = np.zeros((1, model.code_len, model.codeword_dim), "float32")
    image = np.zeros((1, *model.input_size, 3), "float32")
    with pytest.raises(ValueError, match=r"layout='pixels'; expected one of"):
        model.base_model(code, image=image, layout="pixels")
