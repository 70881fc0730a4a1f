"""DepthMetrics against big_vision's NYU convention, plus bad inputs."""

import json

import keras
import numpy as np
import pytest

from uvim_keras.metrics import DepthMetrics
from uvim_keras.metrics.depth import METRIC_NAMES
from uvim_keras.metrics.depth import nearest_indices

RTOL = 1e-5


def load_case(root, case):
    arrays = dict(np.load(root / "depth" / f"{case}.npz"))
    with open(root / "depth" / f"{case}.json") as f:
        meta = json.load(f)
    return arrays, meta


def make_metric(meta):
    return DepthMetrics(min_depth=meta["min_depth"],
                        max_depth=meta["max_depth"],
                        nyu_eval_crop=meta["apply_nyu_eval_crop"])


def assert_close(result, expected):
    assert set(result) == set(METRIC_NAMES)
    for key in METRIC_NAMES:
        assert result[key] == pytest.approx(expected[key], rel=RTOL), key


def test_depth_matches_reference(fixtures_root, depth_case):
    a, meta = load_case(fixtures_root, depth_case)
    metric = make_metric(meta)
    metric.update_state(a["gt"], a["pred"])
    assert metric.num_images == meta["n_images"]
    assert_close(metric.result(), meta["expected"])


@pytest.mark.multibackend
def test_depth_per_image_and_channel_axis(fixtures_root, depth_case):
    a, meta = load_case(fixtures_root, depth_case)
    metric = make_metric(meta)
    for i, per_image in enumerate(meta["per_image"]):
        single = make_metric(meta)
        single.update_state(a["gt"][i:i + 1], a["pred"][i:i + 1])
        assert_close(single.result(), per_image)
        # (1, H, W, 1) backend tensors for GT, a bare (h, w) map for the
        # prediction, accumulated image by image.
        metric.update_state(
            keras.ops.convert_to_tensor(a["gt"][i][None, ..., None]),
            a["pred"][i])
    assert_close(metric.result(), meta["expected"])


def test_resize_indices_match_reference(fixtures_root, depth_case):
    a, meta = load_case(fixtures_root, depth_case)
    h, w = meta["gt_eval_shape"]
    ph, pw = a["pred"].shape[1:]
    np.testing.assert_array_equal(nearest_indices(ph, h), a["resize_rows"])
    np.testing.assert_array_equal(nearest_indices(pw, w), a["resize_cols"])


def test_nearest_indices_half_pixel_centres():
    # floor((i + 0.5) * in / out): 512 -> 426 starts 0, 1, 3; 2 -> 4 repeats.
    assert nearest_indices(512, 426)[:3].tolist() == [0, 1, 3]
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(4, 2).tolist() == [1, 3]
    assert nearest_indices(512, 560)[-1] == 511


def test_hand_made_conventions():
    gt = np.array([[[0.0, 2.0], [10.0, 4.0]]], np.float32)   # 0, 10 invalid
    pred = np.array([[[5.0, 2.5], [3.0, 40.0]]], np.float32)  # 40 not clipped
    metric = DepthMetrics()
    metric.update_state(gt, pred)
    result = metric.result()
    assert result["RMSE"] == pytest.approx(np.sqrt((0.25 + 36**2) / 2))
    assert result["abs_RE"] == pytest.approx((0.5 / 2 + 36 / 4) / 2)
    assert result["log10"] == pytest.approx(
        (np.log10(2.5 / 2) + np.log10(40 / 4)) / 2)
    # 2.5 / 2 = 1.25 exactly: not < 1.25 (strict).
    assert result["delta1"] == 0.0
    assert result["delta2"] == 0.5
    assert result["delta3"] == 0.5


def test_images_are_averaged_not_pooled():
    gt = np.ones((2, 2, 2), np.float32)
    gt[1, 0] = 0.0                       # image 2 has 2 valid pixels
    pred = np.ones_like(gt)
    pred[1] = 2.0
    metric = DepthMetrics()
    metric.update_state(gt, pred)
    assert metric.result()["RMSE"] == pytest.approx(0.5)   # (0 + 1) / 2


def test_image_without_valid_pixels_is_skipped():
    metric = DepthMetrics()
    metric.update_state(np.zeros((1, 4, 4)), np.ones((1, 4, 4)))
    assert metric.num_skipped == 1 and metric.num_images == 0
    assert all(np.isnan(v) for v in metric.result().values())
    metric.update_state(np.full((1, 4, 4), 2.0), np.full((1, 4, 4), 2.0))
    assert metric.result()["RMSE"] == 0.0 and metric.result()["delta1"] == 1.0


def test_nyu_crop_rows_54_to_479():
    gt = np.full((1, 480, 640), 3.0, np.float32)
    gt[0, :54] = 9.0                      # outside the crop (rows 45..53 too)
    gt[0, :, :41] = 9.0
    gt[0, :, 601:] = 9.0
    pred = np.full((1, 426, 560), 3.0, np.float32)
    metric = DepthMetrics(nyu_eval_crop=True)
    metric.update_state(gt, pred)
    assert metric.result()["RMSE"] == 0.0
    gt[0, 479, 600] = 4.0                 # last row and column are inside
    metric.reset_state()
    metric.update_state(gt, pred)
    assert metric.result()["RMSE"] > 0.0


def test_reset_and_config_round_trip():
    metric = DepthMetrics(min_depth=0.01, max_depth=8.0, nyu_eval_crop=True,
                          name="nyu")
    config = metric.get_config()
    json.dumps(config)
    clone = DepthMetrics.from_config(config)
    assert (clone.min_depth, clone.max_depth, clone.nyu_eval_crop,
            clone.name) == (0.01, 8.0, True, "nyu")
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, DepthMetrics) and clone.max_depth == 8.0
    metric.update_state(np.full((1, 480, 640), 2.0), np.full((1, 8, 8), 1.0))
    assert metric.result()["RMSE"] == pytest.approx(1.0)
    metric.reset_state()
    assert metric.num_images == 0 and np.isnan(metric.result()["RMSE"])


# --- bad input ----------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_predictions(bad):
    pred = np.ones((2, 4, 4), np.float32)
    pred[1, 2, 3] = bad
    metric = DepthMetrics()
    with pytest.raises(ValueError, match=rf"y_pred.*{bad}.*finite"):
        metric.update_state(np.ones((2, 4, 4)), pred)
    assert metric.num_images == 0


def test_non_positive_prediction_on_valid_pixel():
    pred = np.ones((1, 4, 4), np.float32)
    pred[0, 1, 1] = 0.0
    with pytest.raises(ValueError, match=r"y_pred\[0\].*0\.0.*> 0"):
        DepthMetrics().update_state(np.ones((1, 4, 4)), pred)


def test_bad_shapes():
    metric = DepthMetrics()
    with pytest.raises(ValueError, match=r"y_pred.*batch size 3.*2"):
        metric.update_state(np.ones((2, 4, 4)), np.ones((3, 4, 4)))
    with pytest.raises(ValueError, match=r"y_true.*\(2, 4, 4, 2\)"):
        metric.update_state(np.ones((2, 4, 4, 2)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match=r"y_true.*\(426, 560\).*\(480, 640\)"):
        DepthMetrics(nyu_eval_crop=True).update_state(
            np.ones((1, 426, 560)), np.ones((1, 8, 8)))
    with pytest.raises(ValueError, match=r"min_depth, max_depth.*10.*1"):
        DepthMetrics(min_depth=10, max_depth=1)
    with pytest.raises(ValueError, match="sample_weight"):
        metric.update_state(np.ones((1, 4, 4)), np.ones((1, 4, 4)),
                            sample_weight=np.ones(1))
