"""Inputs are checked: images of `UViM.predict` / `sample` and
`GuidingCodeLM.generate` (floats in [-1, 1] or uint8), labels of `fit`
(arrays up front, tf.data batches in the pipeline, compiled steps through
the task's loss)."""

import numpy as np
import pytest

from common import to_numpy
from helpers import panoptic_batch, randomize, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend


# -- images --------------------------------------------------------------------------------
def test_prepare_images_converts_uint8_and_refuses_out_of_range():
    import keras

    from uvim_keras.models.checks import prepare_images

    u8 = np.array([0, 127, 255], "uint8").reshape(1, 1, 3, 1).repeat(3, -1)
    out = prepare_images(u8, "x")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, :, 0], [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-7)
    np.testing.assert_allclose(to_numpy(prepare_images(keras.ops.convert_to_tensor(u8), "x")),
                               out, atol=1e-7)
    ok = np.full((1, 2, 2, 3), 1.0005, "float32")  # within the tolerance: returned as is
    assert prepare_images(ok, "x") is ok
    for bad, match in [
        (np.full((1, 2, 2, 3), 255.0, "float32") * np.array([0, 1, 1], "float32"),
         r"x has values in \[0, 255\]; expected floats in \[-1, 1\] \(uint8 images are "
         r"converted: pass them as uint8"),
        (np.full((1, 2, 2, 3), -1.5, "float32"), r"x has values in \[-1.5, -1.5\]; expected"),
        (np.where(np.arange(12).reshape(1, 2, 2, 3) == 5, np.nan, 0.0).astype("float32"),
         r"x has NaN or infinite values.*expected finite floats in \[-1, 1\]"),
        (np.full((1, 2, 2, 3), np.inf, "float32"), r"x has NaN or infinite values"),
        (np.zeros((1, 2, 2, 3), "int32"), r"x has dtype int32; expected floats in \[-1, 1\] "
                                          r"\(or uint8"),
    ]:
        with pytest.raises(ValueError, match=match):
            prepare_images(bad, "x")
        if bad.dtype.kind == "f":  # a backend tensor: reduced where it lives
            with pytest.raises(ValueError, match=match):
                prepare_images(keras.ops.convert_to_tensor(bad), "x")


@pytest.mark.slow
def test_predict_sample_and_generate_check_image_values():
    from uvim_keras import UViM

    lm, stage1 = tiny_lm(), tiny_stage1()
    randomize(lm, 1)
    uvim = UViM.from_stage1(lm, stage1)
    images = panoptic_batch(2)["image"]
    as_u8 = np.round((images + 1) * 127.5).astype("uint8")
    back = as_u8.astype("float32") / 127.5 - 1
    np.testing.assert_array_equal(uvim.predict(as_u8, verbose=0), uvim.predict(back, verbose=0))
    np.testing.assert_array_equal(uvim.sample(as_u8, temperature=0.0),
                                  uvim.sample(back, temperature=0.0))
    np.testing.assert_array_equal(to_numpy(lm.generate(as_u8)), to_numpy(lm.generate(back)))

    in_255 = as_u8.astype("float32")
    with pytest.raises(ValueError, match=r"^x has values in \[\d+, 255\]; expected floats in "
                                         r"\[-1, 1\] \(uint8 images are converted"):
        uvim.predict(in_255, verbose=0)
    with pytest.raises(ValueError, match=r"^images has values in \[\d+, 255\]"):
        uvim.sample(in_255)
    with pytest.raises(ValueError, match=r"^images has values in \[\d+, 255\]"):
        lm.generate(in_255)
    nan = images.copy()
    nan[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"^x has NaN or infinite values"):
        uvim.predict(nan, verbose=0)
    with pytest.raises(ValueError, match=r"^x\['image'\] has NaN or infinite values"):
        uvim.predict({"image": nan, "seed": np.zeros(2, "int32")}, verbose=0)
    with pytest.raises(ValueError, match=r"^images has NaN or infinite values"):
        uvim.sample(nan, temperature=1.0, seed=0)
    with pytest.raises(ValueError, match=r"^images has NaN or infinite values"):
        lm.generate(nan)


# -- labels --------------------------------------------------------------------------------
def _bad_labels_batch(n=4, seed=0):
    batch = panoptic_batch(n, seed=seed)
    labels = batch["labels"].copy()
    labels[-1, :2, :2, 0] = 9    # semantic id >= num_classes (5)
    labels[-1, 2:4, :2, 1] = -1  # negative instance id
    return {"image": batch["image"], "labels": labels}


def test_fit_checks_label_arrays_up_front():
    import keras

    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    with pytest.raises(ValueError, match=r"semantic ids\) range over \[\d, 9\]; expected ids in "
                                         r"\[0, 5\)"):
        model.fit(_bad_labels_batch(), batch_size=2, epochs=1, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 0


@pytest.mark.slow
def test_fit_checks_tf_data_labels_in_the_pipeline():
    import keras

    tf = pytest.importorskip("tensorflow")
    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    good = panoptic_batch(4)
    data = {k: np.concatenate([good[k], v]) for k, v in _bad_labels_batch().items()}
    ds = tf.data.Dataset.from_tensor_slices(data).batch(4)  # batch 2 holds the bad labels
    with pytest.raises(ValueError, match=r"^a batch of the dataset: labels\[\.\.\., 0\] "
                                         r"\(semantic ids\) range over \[\d, 9\]"):
        model.fit(ds, epochs=1, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) <= 1  # the bad batch never trained


@pytest.mark.slow
def test_compiled_step_turns_bad_labels_into_a_stop():
    """A generator's batches reach the compiled step unchecked: the task's loss
    is NaN there, so fit stops before applying it (torch runs the step eagerly
    and the model's own check raises first)."""
    import keras

    from uvim_keras import ColorizationTask, DepthTask, PanopticTask
    from uvim_keras.training import NonFiniteLossError

    # The in-graph check itself, per task.
    labels = keras.ops.convert_to_tensor(_bad_labels_batch()["labels"])
    task = PanopticTask(num_classes=5, max_instances=4)
    assert bool(to_numpy(task.label_error(labels)))
    assert not bool(to_numpy(task.label_error(labels[:3])))
    logits = {"semantics": keras.ops.zeros((3, 16, 16, 5)),
              "instances": keras.ops.zeros((3, 16, 16, 4))}
    assert np.isfinite(to_numpy(task.loss(labels[:3], logits)))
    logits = {k: keras.ops.zeros((4,) + tuple(v.shape[1:])) for k, v in logits.items()}
    if keras.backend.backend() == "torch":  # torch's one_hot refuses the ids itself
        with pytest.raises(RuntimeError, match="Class values must be smaller"):
            task.loss(labels, logits)
    else:
        assert np.isnan(to_numpy(task.loss(labels, logits)))
    depth = np.ones((2, 4, 4, 1), "float32")
    depth[1, 0, 0, 0] = np.nan
    assert bool(to_numpy(DepthTask().label_error(depth)))
    assert not bool(to_numpy(DepthTask().label_error(depth[:1])))
    colours = np.zeros((2, 4, 4, 3), "float32")
    assert not bool(to_numpy(ColorizationTask().label_error(colours)))
    assert bool(to_numpy(ColorizationTask().label_error(colours + 200)))
    with pytest.raises(ValueError, match=r"labels \(colours\) range over \[200, 200\]"):
        ColorizationTask().check_labels(colours + 200)

    model = tiny_stage1()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    good, bad = panoptic_batch(2), _bad_labels_batch(2)

    def batches():
        yield (good,)
        yield (bad,)

    expected = NonFiniteLossError
    match = (r"non-finite loss at step 2: loss=nan .*The step was not applied.*semantic ids\) "
             r"must be in \[0, 5\)")
    if keras.backend.backend() == "torch":
        expected, match = ValueError, r"semantic ids\) range over \[\d, 9\]"
    with pytest.raises(expected, match=match):
        model.fit(batches(), epochs=1, steps_per_epoch=2, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 1
    assert all(np.isfinite(to_numpy(v.value)).all() for v in model.variables
               if "float" in str(v.dtype))
