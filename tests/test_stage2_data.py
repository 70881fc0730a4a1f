"""Stage-II data: codes from a frozen stage I, in the step or precomputed."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from common import to_numpy  # noqa: E402
from helpers import panoptic_batch, tiny_lm, tiny_stage1  # noqa: E402
from uvim_keras.data.stage2 import (  # noqa: E402
    Stage2Model, load_code_shards, oracle_codes, oracle_inputs, precompute_codes)


@pytest.fixture(scope="module")
def stage1():
    return tiny_stage1(seed=0)


@pytest.fixture(scope="module")
def data():
    return panoptic_batch(n=8, seed=1)


def batches(arrays, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)


def weights(model):
    return [to_numpy(v) for v in model.weights]


def test_precomputed_codes_equal_in_step_codes(stage1, data, tmp_path):
    memory = next(iter(precompute_codes(stage1, batches(data)).batch(8)))
    assert memory["codes"].shape == (8, 4) and memory["codes"].dtype == np.int32
    np.testing.assert_array_equal(memory["image"], data["image"])
    files = next(iter(precompute_codes(stage1, batches(data), tmp_path, shard_size=3)
                      .batch(8)))
    np.testing.assert_array_equal(files["codes"], memory["codes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    reloaded = list(load_code_shards(tmp_path).as_numpy_iterator())
    assert len(reloaded) == 8 and reloaded[5]["codes"].shape == (4,)
    with pytest.raises(ValueError, match="overwrite"):
        precompute_codes(stage1, batches(data), tmp_path)
    with pytest.raises(ValueError, match="index.json"):
        load_code_shards(tmp_path / "nothing")
    # the codes computed inside the compiled step (predict) are those codes
    model = Stage2Model(tiny_lm(seed=3), stage1)
    in_step = model.predict(batches(data), verbose=0)["codes"]
    np.testing.assert_array_equal(in_step, memory["codes"])


@pytest.mark.slow
def test_fit_in_step_equals_fit_on_precomputed(stage1, data):
    frozen = weights(stage1)
    model = Stage2Model(tiny_lm(seed=3), stage1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    hist = model.fit(batches(data, 8), epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"]).all()
    assert len(model.trainable_weights) == len(model.lm.trainable_weights)
    for a, b in zip(frozen, weights(stage1)):   # stage I (and its VQ state) frozen
        np.testing.assert_array_equal(a, b)
    cached = precompute_codes(stage1, batches(data))
    lm = tiny_lm(seed=3)
    lm.compile(optimizer=keras.optimizers.SGD(0.1))
    hist_cached = lm.fit(cached.batch(8), epochs=2, verbose=0, shuffle=False)
    np.testing.assert_allclose(hist.history["loss"], hist_cached.history["loss"], rtol=1e-5)
    for a, b in zip(weights(model.lm), weights(lm)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_image_ctx_at_label_resolution(stage1, data):
    rng = np.random.default_rng(0)
    big = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    batch = {"image": big, "image_ctx": data["image"], "labels": data["labels"]}
    inputs = oracle_inputs(stage1, batch)
    assert inputs["image"] is batch["image_ctx"]
    expected = next(iter(precompute_codes(stage1, batches(data)).batch(8)))["codes"]
    cached = next(iter(precompute_codes(stage1, batches(batch)).batch(8)))
    np.testing.assert_array_equal(cached["codes"], expected)
    assert cached["image"].shape == (8, 32, 32, 3)      # the LM's image is kept
    # without image_ctx the image is resized to stage I's input size
    resized = oracle_inputs(stage1, {"image": big, "labels": data["labels"]})["image"]
    assert tuple(resized.shape) == (8, 16, 16, 3)


def test_bad_stage2_input(stage1, data):
    with pytest.raises(ValueError, match="float32; the panoptic task expects int labels"):
        oracle_codes(stage1, dict(data, labels=data["labels"].astype("float32")))
    with pytest.raises(ValueError, match="no 'labels'"):
        oracle_codes(stage1, {"image": data["image"]})
    with pytest.raises(ValueError, match="code_len 5 != 4"):
        Stage2Model(tiny_lm(code_len=5), stage1)
    with pytest.raises(ValueError, match=r"no key\(s\) \['image'\]"):
        precompute_codes(stage1, batches({"image_ctx": data["image"],
                                          "labels": data["labels"]}))
    with pytest.raises(ValueError, match="'image'"):
        Stage2Model(tiny_lm(seed=0), stage1)({"labels": data["labels"]})
