"""DepthTask's output rules: big_vision's argmax bin (the default) and the
expected depth over the bins (`output="mean"`), in the task and in a UViM."""

import numpy as np
import pytest

from common import to_numpy
from helpers import randomize, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend


def _task(**kwargs):
    from uvim_keras.tasks import DepthTask

    return DepthTask(bins=8, min_depth=0.0, max_depth=4.0, **kwargs)


def _logits(seed=0, shape=(2, 3, 5)):
    return np.random.default_rng(seed).normal(size=shape + (8,)).astype("float32") * 3


def test_argmax_is_the_default_and_gives_the_centre_of_the_most_likely_bin():
    logits = _logits()
    centres = (np.arange(8) + 0.5) * 0.5
    out = to_numpy(_task().predict_outputs({"depth": logits}))
    np.testing.assert_allclose(out, centres[logits.argmax(-1)], rtol=1e-6)
    assert _task().output == "argmax"


def test_mean_is_the_expected_depth_over_the_bins():
    logits = _logits(1)
    centres = (np.arange(8) + 0.5) * 0.5
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = to_numpy(_task(output="mean").predict_outputs({"depth": logits}))
    assert out.dtype == np.float32 and out.shape == logits.shape[:-1]
    np.testing.assert_allclose(out, (probs * centres).sum(-1), rtol=1e-5, atol=1e-6)
    # One sure bin: both rules agree.
    sure = np.full((1, 1, 1, 8), -50.0, "float32")
    sure[..., 3] = 50.0
    for output in ("argmax", "mean"):
        np.testing.assert_allclose(to_numpy(_task(output=output).predict_outputs({"depth": sure})),
                                   [[[1.75]]], rtol=1e-6)


def test_output_rule_round_trips_through_the_config_and_older_configs_load():
    from uvim_keras.tasks import DepthTask

    task = _task(output="mean")
    again = DepthTask.from_config(task.get_config())
    assert again.output == "mean" and again.get_config() == task.get_config()
    assert "expected depth" in again.describe_outputs()
    old = {"bins": 8, "min_depth": 0.0, "max_depth": 4.0}  # saved before the option existed
    assert DepthTask.from_config(old).output == "argmax"


def test_unknown_output_rule_is_a_clear_error():
    with pytest.raises(ValueError, match=r"output='median'; expected one of \('argmax', 'mean'\)"):
        _task(output="median")


def test_a_uvim_with_the_mean_rule_predicts_the_expected_depth_of_its_code(tmp_path):
    import keras

    from uvim_keras import UViM

    stage1 = tiny_stage1(task=_task())
    randomize(stage1, seed=2)
    lm = tiny_lm(code_len=stage1.code_len, dict_size=stage1.dict_size)
    randomize(lm, seed=3)
    images = np.random.default_rng(4).uniform(-1, 1, (2, *stage1.input_size, 3)).astype("float32")
    mean = UViM.from_stage1(lm, stage1, task=_task(output="mean"))
    assert mean.task.output == "mean" and stage1.task.output == "argmax"
    codes = to_numpy(lm.generate(images, temperature=0.0))
    logits = to_numpy(stage1.decode(codes, images)["depth"])
    expected = to_numpy(_task(output="mean").predict_outputs({"depth": logits}))
    np.testing.assert_allclose(mean.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)
    path = str(tmp_path / "mean.keras")
    mean.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.task.output == "mean"
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)


def test_the_demos_mean_of_samples_averages_seeded_samples_per_batch():
    from uvim_keras import UViM
    from uvim_keras.cli.demo import mean_of_samples

    stage1 = tiny_stage1(task=_task())
    randomize(stage1, seed=5)
    lm = tiny_lm(code_len=stage1.code_len, dict_size=stage1.dict_size)
    randomize(lm, seed=6)
    uvim = UViM.from_stage1(lm, stage1)
    images = np.random.default_rng(7).uniform(-1, 1, (5, *stage1.input_size, 3)).astype("float32")
    out = mean_of_samples(uvim, images, num_samples=3, seed=1, batch_size=2)
    assert out.shape == (5, *stage1.input_size)
    second = uvim.sample(images[2:4], num_samples=3, temperature=1.0, seed=1 * 100_003 + 2)
    np.testing.assert_allclose(out[2:4], second.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, mean_of_samples(uvim, images, 3, seed=1, batch_size=2))
