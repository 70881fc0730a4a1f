"""Stage-I model, LM and UViM: training, serialization, bad input."""

import numpy as np
import pytest

from common import to_numpy
from helpers import TINY, panoptic_batch, randomize_with_state, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend


def _fit_losses(model, data, epochs, **fit_kwargs):
    history = model.fit(data, epochs=epochs, verbose=0, **fit_kwargs)
    return history.history


@pytest.mark.slow
def test_stage1_fit_lowers_loss_and_logs_codebook_usage():
    import keras

    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    batch = panoptic_batch(8)
    counts_before = to_numpy(model.quantizer.counts).copy()
    before = float(model.evaluate(batch, batch_size=8, verbose=0, return_dict=True)["loss"])
    hist = _fit_losses(model, batch, epochs=30, batch_size=8)
    after = float(model.evaluate(batch, batch_size=8, verbose=0, return_dict=True)["loss"])
    assert after < 0.5 * before, (before, after)
    for key in ("loss", "reconstruction_loss", "codebook_max_ratio", "codebook_zeros_ratio"):
        assert key in hist, hist.keys()
    assert 0 < hist["codebook_max_ratio"][-1] <= 1
    # The dictionary was updated in training (EMA counts moved).
    assert not np.allclose(to_numpy(model.quantizer.counts), counts_before)


@pytest.mark.slow
def test_stage1_gradients_reach_oracle_through_quantizer():
    import keras

    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    oracle_before = [to_numpy(v).copy() for v in model.oracle.trainable_variables]
    # Heads are zero-initialised (as in big_vision): the first step only moves
    # them, later steps reach the trunk and, straight through the VQ, the oracle.
    model.fit(panoptic_batch(4), epochs=3, batch_size=4, verbose=0)
    moved = [
        not np.allclose(to_numpy(v), b) for v, b in zip(model.oracle.trainable_variables, oracle_before)
    ]
    assert any(moved), "no oracle weight received a gradient (straight-through broken)"


@pytest.mark.slow
def test_lm_fit_lowers_loss():
    import keras

    lm = tiny_lm()
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    codes = np.tile(np.array([[1, 5, 5, 2]], "int32"), (8, 1))
    data = {"image": images, "codes": codes}
    before = float(lm.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"])
    lm.fit(data, epochs=30, batch_size=8, verbose=0)
    after = float(lm.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"])
    assert after < 0.5 * before, (before, after)
    np.testing.assert_array_equal(to_numpy(lm.generate(images[:2])), codes[:2])


def test_stage1_encode_decode_and_predict_outputs():
    model = tiny_stage1()
    batch = panoptic_batch(2)
    codes = to_numpy(model.encode(batch))
    assert codes.shape == (2, TINY["code_len"]) and codes.dtype == np.int32
    out = model(batch, training=False)
    np.testing.assert_array_equal(codes, to_numpy(out["codes"]))
    logits = model.decode(codes, batch["image"])
    for key in logits:
        np.testing.assert_allclose(to_numpy(logits[key]), to_numpy(out["logits"][key]), atol=1e-5)
    pan = to_numpy(model.predict_outputs(batch))
    assert pan.shape == (2, 16, 16, 2)


def _assert_same_outputs(a, b, batch):
    out_a, out_b = a(batch, training=False), b(batch, training=False)
    np.testing.assert_array_equal(to_numpy(out_a["codes"]), to_numpy(out_b["codes"]))
    for key in out_a["logits"]:
        np.testing.assert_allclose(
            to_numpy(out_a["logits"][key]), to_numpy(out_b["logits"][key]), atol=1e-6
        )


def test_stage1_config_and_keras_file_round_trip(tmp_path):
    import keras

    from uvim_keras import UViMStage1

    model = tiny_stage1()
    randomize_with_state(model)
    clone = UViMStage1.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    path = tmp_path / "stage1.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, UViMStage1)
    for name in ("dictionary", "counts"):
        np.testing.assert_array_equal(
            to_numpy(getattr(loaded.quantizer, name)), to_numpy(getattr(model.quantizer, name))
        )
    _assert_same_outputs(model, loaded, panoptic_batch(2))


@pytest.mark.slow
def test_lm_and_uvim_keras_file_round_trip(tmp_path):
    import keras

    from uvim_keras import UViM

    lm = tiny_lm()
    randomize_with_state(lm)
    stage1 = tiny_stage1()
    randomize_with_state(stage1)
    uvim = UViM.from_stage1(lm, stage1)
    images = panoptic_batch(2)["image"]
    expected = uvim.predict(images, verbose=0)
    path = tmp_path / "uvim.keras"
    uvim.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, UViM)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    np.testing.assert_array_equal(to_numpy(loaded.lm.generate(images)), to_numpy(lm.generate(images)))
    lm_path = tmp_path / "lm.keras"
    lm.save(lm_path)
    lm2 = keras.saving.load_model(lm_path)
    np.testing.assert_array_equal(to_numpy(lm2.generate(images)), to_numpy(lm.generate(images)))


@pytest.mark.slow
def test_uvim_sample_shapes_and_seed():
    from uvim_keras import UViM

    lm, stage1 = tiny_lm(), tiny_stage1()
    randomize_with_state(lm)
    uvim = UViM.from_stage1(lm, stage1)
    images = panoptic_batch(3)["image"]
    a = uvim.sample(images, num_samples=4, temperature=1.0, seed=7)
    b = uvim.sample(images, num_samples=4, temperature=1.0, seed=7)
    assert a.shape == (3, 4, 16, 16, 2)
    np.testing.assert_array_equal(a, b)
    greedy = uvim.predict(images, verbose=0)
    np.testing.assert_array_equal(uvim.sample(images, 1, temperature=0.0)[:, 0], greedy)
    # sampled predictions do not depend on how the images are batched
    runs = [uvim.predict(images, batch_size=bs, temperature=1.0, seed=3, verbose=0)
            for bs in (1, 2, 3)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    np.testing.assert_array_equal(uvim.sample(images, 1, temperature=1.0, seed=3)[:, 0], runs[0])
    with pytest.raises(ValueError, match=r"seed=1\.5: expected None or an int"):
        uvim.sample(images, temperature=1.0, seed=1.5)


# -- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: {**b, "image": b["image"][0]}, r"image has shape .*expected rank 4"),
        (lambda b: {**b, "image": b["image"][..., :1]}, r"image has 1 channels.*expected 3"),
        (lambda b: {**b, "image": b["image"][:, :12, :12]}, r"image has spatial size \(12, 12\)"),
        (lambda b: {**b, "labels": b["labels"] + np.array([10, 0], "int32")},
         r"semantic ids.*expected ids in \[0, 5\)"),
        (lambda b: {**b, "labels": b["labels"] + np.array([0, 7], "int32")},
         r"instance ids.*expected ids in \[0, 4\)"),
        (lambda b: {**b, "labels": b["labels"][:1]}, r"image has batch size 2 but labels has 1"),
        (lambda b: {"image": b["image"]}, r"no 'labels'"),
    ],
)
def test_stage1_bad_input(mutate, match):
    model = tiny_stage1()
    with pytest.raises(ValueError, match=match):
        model(mutate(panoptic_batch(2)))


def test_bad_codes_and_config():
    from uvim_keras import PanopticTask, UViMStage1

    model = tiny_stage1()
    image = panoptic_batch(2)["image"]
    with pytest.raises(ValueError, match=r"codes range over \[0, 8\]; expected codes in \[0, 8\)"):
        model.decode(np.array([[0, 1, 2, 8], [0, 0, 0, 0]], "int32"), image)
    with pytest.raises(ValueError, match=r"codes has shape \(2, 3\)"):
        model.decode(np.zeros((2, 3), "int32"), image)
    with pytest.raises(ValueError, match=r"input_size=\(18, 18\) is not a multiple of patch_size"):
        UViMStage1(PanopticTask(5, 4), **{**TINY, "input_size": 18})
    with pytest.raises(ValueError, match=r"code_len=5 must be a square"):
        UViMStage1(PanopticTask(5, 4), **{**TINY, "code_len": 5})
    lm = tiny_lm()
    with pytest.raises(ValueError, match=r"image has 4 channels"):
        lm.generate(np.zeros((1, 16, 16, 4), "float32"))
    with pytest.raises(ValueError, match=r"codes range over"):
        lm({"image": image, "codes": np.full((2, 4), -1, "int32")})


# -- a NaN batch in fit --------------------------------------------------------------
def _state(model):
    """Model variables (weights, VQ dictionary and counts, seed states) and optimizer state."""
    return [to_numpy(v.value).copy() for v in list(model.variables) + list(model.optimizer.variables)]


def _with_nan_images(batch, rows):
    bad = {k: v.copy() for k, v in batch.items()}
    bad["image"][rows] = np.nan
    return bad


@pytest.mark.slow
def test_fit_stops_on_a_nan_batch_without_applying_it():
    import keras

    from uvim_keras.training import NonFiniteLossError

    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    batch = panoptic_batch(4)
    model.fit(batch, batch_size=2, epochs=1, verbose=0)
    before = _state(model)
    # Batch 1 of this fit is good, batch 2 has NaN images: step 4 of the run.
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 4: loss=nan .*The "
                                                 r"step was not applied"):
        model.fit(_with_nan_images(batch, slice(2, 4)), batch_size=2, epochs=2, verbose=0,
                  shuffle=False)
    assert int(to_numpy(model.optimizer.iterations)) == 3
    assert all(np.isfinite(a).all() for a in _state(model) if a.dtype.kind == "f")
    # A NaN first batch: the model is exactly as it was before the step.
    model.fit(batch, batch_size=2, epochs=1, verbose=0)
    before = _state(model)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 6"):
        model.fit(_with_nan_images(batch, slice(0, 2)), batch_size=2, epochs=1, verbose=0,
                  shuffle=False)
    for a, b, v in zip(before, _state(model), list(model.variables) + list(model.optimizer.variables)):
        np.testing.assert_array_equal(b, a, err_msg=v.path)


@pytest.mark.slow
def test_lm_fit_stops_on_nan_and_stop_on_nan_false_opts_out():
    import keras

    from uvim_keras.training import NonFiniteLossError

    lm = tiny_lm()
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    data = {"image": rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32"),
            "codes": rng.integers(0, 8, (2, 4)).astype("int32")}
    lm.fit(data, batch_size=2, epochs=1, verbose=0)
    before = _state(lm)
    bad = _with_nan_images(data, slice(0, 1))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2"):
        lm.fit(bad, batch_size=2, epochs=1, verbose=0)
    for a, b in zip(before, _state(lm)):
        np.testing.assert_array_equal(b, a)
    # Opting out: Keras' own step, which applies the NaN update.
    history = lm.fit(bad, batch_size=2, epochs=1, verbose=0, stop_on_nan=False)
    assert np.isnan(history.history["loss"][-1])
    assert not all(np.isfinite(to_numpy(v)).all() for v in lm.trainable_variables)
