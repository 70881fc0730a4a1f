"""Keras' `predict` on UViM's models: arrays, `tf.data` datasets and
`PyDataset`s, batch-independent sampling seeds, and the stage-I model."""

import numpy as np
import pytest

from common import to_numpy
from helpers import panoptic_batch, randomize, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend


@pytest.fixture(scope="module")
def uvim():
    from uvim_keras import UViM

    lm, stage1 = tiny_lm(), tiny_stage1()
    randomize(lm, 1, std=0.5)
    randomize(stage1, 2, std=0.5)
    return UViM.from_stage1(lm, stage1)


@pytest.fixture(scope="module")
def images():
    return panoptic_batch(5, seed=3)["image"]


class Images:
    """A `keras.utils.PyDataset` of image batches."""

    def __new__(cls, images, batch_size):
        import keras

        class _Images(keras.utils.PyDataset):
            def __len__(self):
                return -(-len(images) // batch_size)

            def __getitem__(self, i):
                return images[i * batch_size:(i + 1) * batch_size]

        return _Images()


@pytest.mark.slow
def test_predict_takes_arrays_datasets_and_py_datasets(uvim, images):
    tf = pytest.importorskip("tensorflow")

    expected = uvim.sample(images, 1, temperature=0.0)[:, 0]  # greedy, decoded eagerly
    got = uvim.predict(images, batch_size=2, verbose=0)
    np.testing.assert_array_equal(got, expected)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    np.testing.assert_array_equal(uvim.predict(dataset, verbose=0), expected)
    np.testing.assert_array_equal(uvim.predict(Images(images, 3), verbose=0), expected)
    assert got.shape == (5, 16, 16, 2) and got.dtype == np.int32


def test_predict_shows_keras_progress_bar(uvim, images, capsys):
    uvim.predict(images, batch_size=2, verbose=1)
    out = capsys.readouterr().out
    assert "3/3" in out and "step" in out, out  # 3 batches, Keras' Progbar


@pytest.mark.slow
def test_sampled_predictions_use_per_image_seeds(uvim, images):
    runs = [uvim.predict(images, batch_size=bs, temperature=1.0, seed=3, verbose=0)
            for bs in (1, 2, 5)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    # the same per-image seeds and noise as `sample`, drawn inside the compiled step
    np.testing.assert_array_equal(uvim.sample(images, 1, temperature=1.0, seed=3)[:, 0], runs[0])
    other = uvim.predict(images, temperature=1.0, seed=4, verbose=0)
    assert not np.array_equal(other, runs[0])
    greedy = uvim.predict(images, verbose=0)  # back to the task's default (T = 0)
    np.testing.assert_array_equal(greedy, uvim.sample(images, 1, temperature=0.0)[:, 0])


@pytest.mark.slow
def test_sampling_a_dataset_is_seeded_by_the_model_generator(uvim, images):
    tf = pytest.importorskip("tensorflow")

    def run(seed):
        data = tf.data.Dataset.from_tensor_slices(images).batch(2)
        return uvim.predict(data, temperature=1.0, seed=seed, verbose=0)

    np.testing.assert_array_equal(run(5), run(5))
    unseeded = [run(None), run(None)]
    assert not np.array_equal(unseeded[0], unseeded[1])


def test_predict_bad_arguments_are_clear_errors(uvim, images):
    with pytest.raises(ValueError, match=r"temperature=-1\.0; expected a finite value >= 0"):
        uvim.predict(images, temperature=-1.0)
    with pytest.raises(ValueError, match=r"seed='a': expected None or an int"):
        uvim.predict(images, temperature=1.0, seed="a")
    with pytest.raises(ValueError, match=r"x has spatial size \(8, 8\)"):
        uvim.predict(images[:, :8, :8])


@pytest.mark.slow
def test_stage1_predict_returns_the_call_outputs():
    model = tiny_stage1()
    randomize(model, 4, std=0.5)
    batch = panoptic_batch(5, seed=2)
    out = model.predict(batch, batch_size=2, verbose=0)
    assert out["codes"].shape == (5, model.code_len)
    np.testing.assert_array_equal(out["codes"], to_numpy(model.encode(batch)))
    assert out["logits"]["semantics"].shape == (5, 16, 16, 5)
    assert out["codebook_max_ratio"].shape == (3,)  # one value per batch
