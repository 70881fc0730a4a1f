"""The layout-independent pieces behind the fast train steps: flax-order
LayerNorm equals Keras' LayerNormalization, `Linear` ((out, in) kernel)
equals `Dense` holding the transposed kernel, and every task's label
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


def test_linear_equals_dense_with_the_transposed_kernel_and_round_trips(tmp_path):
    import keras

    from uvim_keras.layers import Linear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    ours = Linear(7, name="linear")
    ours.build(x.shape)
    assert tuple(ours.kernel.shape) == (7, 12)
    ours.kernel.assign(rng.normal(size=(7, 12)).astype("float32"))
    ours.bias.assign(rng.normal(size=(7,)).astype("float32"))
    theirs = keras.layers.Dense(7)
    theirs.build(x.shape)
    theirs.set_weights([to_numpy(ours.kernel).T, to_numpy(ours.bias)])
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(theirs(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(ours.kernel_in_out()), to_numpy(ours.kernel).T)

    # initialised as Dense would be: the same values for the same seed
    keras.utils.set_random_seed(3)
    fresh = Linear(7)
    fresh.build(x.shape)
    keras.utils.set_random_seed(3)
    dense = keras.layers.Dense(7)
    dense.build(x.shape)
    np.testing.assert_array_equal(to_numpy(fresh.kernel), to_numpy(dense.kernel).T)

    clone = Linear.from_config(ours.get_config())
    clone.build(x.shape)
    clone.set_weights(ours.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(ours(x)))

    model = keras.Sequential([keras.Input((5, 12)), Linear(7, use_bias=False)])
    path = str(tmp_path / "linear.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    assert loaded.layers[0].bias is None


def test_mlp_block_decoding_kernels_give_the_same_output():
    from uvim_keras.layers import MlpBlock

    x = np.random.default_rng(1).normal(size=(3, 1, 16)).astype("float32")
    mlp = MlpBlock(mlp_dim=24)
    y = to_numpy(mlp(x))
    np.testing.assert_allclose(to_numpy(mlp.apply_kernels(x, mlp.kernels_in_out())), y,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("units", [0, -3, 2.5])
def test_linear_bad_units_is_a_clear_error(units):
    from uvim_keras.layers import Linear

    with pytest.raises(ValueError, match=rf"units={units!r}: expected a positive integer"):
        Linear(units)


def test_big_vision_layout_view_transposes_linear_kernels():
    from uvim_keras.convert import BigVisionLayout, variable_map
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
