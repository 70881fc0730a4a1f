"""PanopticQuality against panopticapi reference outputs, plus bad inputs."""

import json

import keras
import numpy as np
import pytest
from metric_fixtures import depth_cases
from metric_fixtures import fid_cases
from metric_fixtures import pq_cases

from uvim_keras.metrics import PanopticQuality
from uvim_keras.metrics import coco_panoptic_io
from uvim_keras.metrics.pq_core import confusion_table

TOL = 1e-9
CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 8, "name": "sky", "isthing": 0},
]


def load_case(root, case):
    folder = root / "pq" / case
    arrays = dict(np.load(folder / "arrays.npz"))
    with open(folder / "expected.json") as f:
        expected = json.load(f)
    return folder, arrays, expected


def assert_matches_panopticapi(result, reference):
    for group in ("All", "Things", "Stuff"):
        assert result[group]["n"] == reference[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(result[group][key] - reference[group][key]) <= TOL, (
                group, key, result[group][key], reference[group][key])
    ref_classes = {int(k): v for k, v in reference["per_class"].items()}
    assert set(result["per_class"]) == set(ref_classes)
    for cid, ref in ref_classes.items():
        got = result["per_class"][cid]
        for key in ("tp", "fp", "fn"):
            assert got[key] == ref[key], (cid, key, got[key], ref[key])
        for key in ("pq", "sq", "rq", "iou_sum"):
            assert abs(got[key] - ref[key]) <= TOL, (cid, key, got[key],
                                                     ref[key])
        assert got["isthing"] == ref["isthing"]
        assert got["name"] == ref["name"]


def test_fixture_sets_are_found():
    assert pq_cases(), "no PQ case of manifest.json found under pq/"
    assert fid_cases(), "no FID case of manifest.json found under fid/"
    assert depth_cases(), "no depth case of manifest.json found under depth/"


def test_pq_from_arrays(fixtures_root, pq_categories, pq_case):
    _, a, expected = load_case(fixtures_root, pq_case)
    metric = PanopticQuality(pq_categories)
    metric.update_state(a["gt_panoptic"], a["pred_panoptic"],
                        crowd=a["gt_crowd"])
    assert metric.num_images == len(a["image_ids"])
    assert_matches_panopticapi(metric.result(), expected["panopticapi"])


@pytest.mark.multibackend
def test_pq_accumulates_image_by_image(fixtures_root, pq_categories, pq_case):
    _, a, expected = load_case(fixtures_root, pq_case)
    metric = PanopticQuality(pq_categories)
    for i in range(len(a["image_ids"])):
        # Single images without batch axis, as backend tensors.
        metric.update_state(keras.ops.convert_to_tensor(a["gt_panoptic"][i]),
                            keras.ops.convert_to_tensor(a["pred_panoptic"][i]),
                            crowd=a["gt_crowd"][i])
    assert_matches_panopticapi(metric.result(), expected["panopticapi"])


def test_pq_invariant_to_monotonic_instance_renumbering(
        fixtures_root, pq_categories, pq_case):
    # Huge GT ids exercise the np.unique path instead of the dense bincount;
    # a monotonic map keeps the (category, instance) order of crowd segments.
    _, a, expected = load_case(fixtures_root, pq_case)
    gt = a["gt_panoptic"].astype(np.int64)
    gt[..., 1] = np.where(gt[..., 1] > 0, gt[..., 1] * 100003 + 7, 0)
    pred = a["pred_panoptic"].copy()
    pred[..., 1] = (pred[..., 1] * 7 + 3) % 997
    metric = PanopticQuality(pq_categories)
    metric.update_state(gt, pred, crowd=a["gt_crowd"])
    assert_matches_panopticapi(metric.result(), expected["panopticapi"])


def test_pq_from_coco_files(fixtures_root, pq_categories, pq_case):
    folder, _, expected = load_case(fixtures_root, pq_case)
    result = coco_panoptic_io.evaluate_coco_panoptic(
        folder / "gt.json", folder / "gt", folder / "pred.json",
        folder / "pred", categories=pq_categories)
    assert_matches_panopticapi(result, expected["panopticapi"])
    # Categories default to the GT JSON's.
    result = coco_panoptic_io.evaluate_coco_panoptic(
        folder / "gt.json", folder / "gt", folder / "pred.json",
        folder / "pred")
    assert_matches_panopticapi(result, expected["panopticapi"])


def test_pq_from_coco_id_arrays(fixtures_root, pq_categories, pq_case):
    folder, a, expected = load_case(fixtures_root, pq_case)
    gt_json = json.loads((folder / "gt.json").read_text())
    pred_json = json.loads((folder / "pred.json").read_text())
    gt_ann = {x["image_id"]: x for x in gt_json["annotations"]}
    pred_ann = {x["image_id"]: x for x in pred_json["annotations"]}
    metric = PanopticQuality(fixtures_root / "pq" / "categories.json")
    for i, image_id in enumerate(a["image_ids"].tolist()):
        metric.update_state_from_coco(
            a["gt_coco_id"][i], gt_ann[image_id]["segments_info"],
            a["pred_coco_id"][i], pred_ann[image_id]["segments_info"])
    assert_matches_panopticapi(metric.result(), expected["panopticapi"])


def test_png_decoding_matches_arrays(fixtures_root, pq_case):
    folder, a, _ = load_case(fixtures_root, pq_case)
    gt_json = json.loads((folder / "gt.json").read_text())
    pred_json = json.loads((folder / "pred.json").read_text())
    files = {x["image_id"]: x["file_name"] for x in gt_json["annotations"]}
    pred_files = {x["image_id"]: x["file_name"]
                  for x in pred_json["annotations"]}
    for i, image_id in enumerate(a["image_ids"].tolist()):
        gt_ids = coco_panoptic_io.read_panoptic_png(
            folder / "gt" / files[image_id])
        pred_ids = coco_panoptic_io.read_panoptic_png(
            folder / "pred" / pred_files[image_id])
        assert gt_ids.dtype == np.int64
        np.testing.assert_array_equal(gt_ids, a["gt_coco_id"][i])
        np.testing.assert_array_equal(pred_ids, a["pred_coco_id"][i])
        np.testing.assert_array_equal(
            coco_panoptic_io.rgb_to_ids(coco_panoptic_io.ids_to_rgb(gt_ids)),
            gt_ids)


def _same_partition(ours, theirs):
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    return (len(pairs[0]) == len(np.unique(ours))
            == len(np.unique(theirs)))


def test_two_channel_conversions(fixtures_root, pq_categories, pq_case):
    _, a, expected = load_case(fixtures_root, pq_case)
    for i in range(len(a["image_ids"])):
        ids, infos = coco_panoptic_io.two_channel_gt_to_coco(
            a["gt_panoptic"][i], pq_categories, crowd=a["gt_crowd"][i])
        ref = expected["gt_segments"][i]
        assert [(s["category_id"], s["iscrowd"], s["area"], s["bbox"])
                for s in infos] == [
            (s["category_id"], s["iscrowd"], s["area"], s["bbox"])
            for s in ref]
        assert _same_partition(ids, a["gt_coco_id"][i])
        ids, infos = coco_panoptic_io.two_channel_to_coco(
            a["pred_panoptic"][i], pq_categories)
        ref = expected["pred_segments"][i]
        assert sorted((s["category_id"], s["area"]) for s in infos) == sorted(
            (s["category_id"], s["area"]) for s in ref)
        assert _same_partition(ids, a["pred_coco_id"][i])


def test_written_coco_files_evaluate_the_same(tmp_path, fixtures_root,
                                              pq_categories, pq_case):
    _, a, expected = load_case(fixtures_root, pq_case)
    gt_anns, pred_anns = [], []
    for i, image_id in enumerate(a["image_ids"].tolist()):
        ids, infos = coco_panoptic_io.two_channel_gt_to_coco(
            a["gt_panoptic"][i], pq_categories, crowd=a["gt_crowd"][i])
        gt_anns.append({"image_id": image_id, "ids": ids,
                        "segments_info": infos})
        ids, infos = coco_panoptic_io.two_channel_to_coco(
            a["pred_panoptic"][i], pq_categories)
        pred_anns.append({"image_id": image_id, "ids": ids,
                          "segments_info": infos})
    coco_panoptic_io.write_coco_panoptic(tmp_path / "gt.json", tmp_path / "gt",
                                         gt_anns, pq_categories)
    coco_panoptic_io.write_coco_panoptic(tmp_path / "pred.json",
                                         tmp_path / "pred", pred_anns,
                                         pq_categories)
    result = coco_panoptic_io.evaluate_coco_panoptic(
        tmp_path / "gt.json", tmp_path / "gt", tmp_path / "pred.json",
        tmp_path / "pred")
    assert_matches_panopticapi(result, expected["panopticapi"])


def test_reset_and_config_round_trip(fixtures_root, pq_categories):
    case = pq_cases()[0]
    _, a, expected = load_case(fixtures_root, case)
    metric = PanopticQuality(fixtures_root / "pq" / "categories.json",
                             name="pq_eval")
    metric.update_state(a["gt_panoptic"], a["pred_panoptic"], a["gt_crowd"])
    config = metric.get_config()
    json.dumps(config)
    clone = PanopticQuality.from_config(config)
    assert clone.name == "pq_eval"
    assert clone.spec.to_list() == metric.spec.to_list()
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, PanopticQuality)
    assert clone.result()["All"]["n"] == 0          # fresh state
    clone.update_state(a["gt_panoptic"], a["pred_panoptic"], a["gt_crowd"])
    assert clone.result() == metric.result()
    metric.reset_state()
    assert metric.num_images == 0
    assert all(v["tp"] + v["fp"] + v["fn"] == 0
               for v in metric.result()["per_class"].values())
    metric.update_state(a["gt_panoptic"], a["pred_panoptic"], a["gt_crowd"])
    assert_matches_panopticapi(metric.result(), expected["panopticapi"])


# --- hand-made semantics -------------------------------------------------


def _scene():
    gt = np.zeros((1, 8, 10, 2), np.int32)
    gt[0, :4, :, 0] = 8
    gt[0, 4:, :5] = (1, 3)
    gt[0, 4:, 5:] = (3, 9)
    return gt


def test_perfect_prediction_with_renumbered_instances():
    gt = _scene()
    pred = gt.copy()
    pred[0, 4:, :5, 1] = 0        # thing instance 0 is an ordinary instance
    pred[0, :4, :5, 1] = 7        # stuff instance ids are ignored
    metric = PanopticQuality(CATS)
    metric(gt, pred)
    result = metric.result()
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 3}
    assert [result["per_class"][c]["tp"] for c in (1, 3, 8)] == [1, 1, 1]


def test_iou_exactly_half_is_not_a_match():
    gt = np.zeros((1, 4, 4, 2), np.int32)
    gt[0, :, :2] = (1, 1)          # 8 px
    pred = np.zeros_like(gt)
    pred[0, :2, :2] = (1, 5)       # 4 px inside the GT: IoU 4/8 = 0.5
    metric = PanopticQuality(CATS)
    metric.update_state(gt, pred)
    cls = metric.result()["per_class"][1]
    assert (cls["tp"], cls["fp"], cls["fn"]) == (0, 1, 1)
    pred[0, 2, 0] = (1, 5)         # 5/8 > 0.5
    metric.reset_state()
    metric.update_state(gt, pred)
    cls = metric.result()["per_class"][1]
    assert (cls["tp"], cls["fp"], cls["fn"]) == (1, 0, 0)
    assert cls["iou_sum"] == pytest.approx(5 / 8, abs=1e-15)


def test_last_crowd_segment_per_category_is_used():
    gt = np.zeros((1, 4, 12, 2), np.int32)
    gt[0, :, 0:4] = (1, 1)         # crowd, listed first
    gt[0, :, 4:8] = (1, 2)         # crowd, listed last (larger instance)
    crowd = np.zeros((1, 4, 12), bool)
    crowd[0, :, :8] = True
    pred = np.zeros_like(gt)
    pred[0, :, 0:2] = (1, 1)       # inside the first crowd: FP (quirk)
    pred[0, :, 4:6] = (1, 2)       # inside the last crowd: dropped
    metric = PanopticQuality(CATS)
    metric.update_state(gt, pred, crowd=crowd)
    cls = metric.result()["per_class"][1]
    assert (cls["tp"], cls["fp"], cls["fn"]) == (0, 1, 0)


def test_confusion_table_counts_pairs():
    gt = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[1, 1, 0], [1, 2, 2]])
    table = confusion_table(gt, pred, 2, 2)
    np.testing.assert_array_equal(table, [[0, 1, 1], [1, 1, 0], [0, 1, 1]])


def test_empty_metric_reports_zero():
    result = PanopticQuality(CATS).result()
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


# --- bad input ----------------------------------------------------------


def test_bad_shapes():
    metric = PanopticQuality(CATS)
    gt = _scene()
    with pytest.raises(ValueError,
                       match=r"y_pred.*\(1, 8, 9, 2\).*\(1, 8, 10, 2\)"):
        metric.update_state(gt, gt[:, :, :9])
    with pytest.raises(ValueError, match=r"y_true.*\(8, 10\).*\(B, H, W, 2\)"):
        metric.update_state(gt[0, :, :, 0], gt[0, :, :, 0])
    with pytest.raises(ValueError, match=r"y_true\[0\].*\(8, 10, 3\)"):
        metric.update_state(np.zeros((1, 8, 10, 3), int),
                            np.zeros((1, 8, 10, 3), int))
    with pytest.raises(ValueError, match=r"crowd.*\(1, 8, 9\).*\(1, 8, 10\)"):
        metric.update_state(gt, gt, crowd=np.zeros((1, 8, 9), bool))
    assert metric.num_images == 0


def test_category_outside_spec():
    metric = PanopticQuality(CATS)
    gt = _scene()
    pred = gt.copy()
    pred[0, 0, 0, 0] = 2
    with pytest.raises(ValueError,
                       match=r"y_pred\[0\]\[\.\.\., 0\].*id 2 .*\[1, 3, 8\]"):
        metric.update_state(gt, pred)
    bad = gt.copy()
    bad[0, 0, 0, 0] = 99
    with pytest.raises(ValueError, match=r"y_true\[0\]\[\.\.\., 0\].*id 99 "):
        metric.update_state(bad, gt)
    bad[0, 0, 0, 0] = -4
    with pytest.raises(ValueError, match=r"y_true\[0\]\[\.\.\., 0\].*id -4 "):
        metric.update_state(bad, gt)
    assert metric.num_images == 0


def test_negative_or_too_large_instance_ids():
    metric = PanopticQuality(CATS)
    gt = _scene()
    bad = gt.copy()
    bad[0, 5, 0, 1] = -1
    with pytest.raises(ValueError, match=r"y_pred\[0\]\[\.\.\., 1\].*-1.*>= 0"):
        metric.update_state(gt, bad)
    with pytest.raises(ValueError, match=r"y_true\[0\]\[\.\.\., 1\].*-1.*>= 0"):
        metric.update_state(bad, gt)
    bad[0, 5, 0, 1] = 1000
    with pytest.raises(ValueError, match=r"y_pred\[0\]\[\.\.\., 1\].*1000.*< 1000"):
        metric.update_state(gt, bad)


def test_bad_crowd_masks():
    metric = PanopticQuality(CATS)
    gt = _scene()
    crowd = np.zeros(gt.shape[:3], bool)
    crowd[0, 4, 0] = True         # one pixel of a 20-pixel segment
    with pytest.raises(ValueError,
                       match=r"crowd\[0\].*category 1, instance 3.*1 of its 20"):
        metric.update_state(gt, gt, crowd=crowd)
    gt[0, 0, 0] = 0
    crowd[:] = False
    crowd[0, 0, 0] = True
    with pytest.raises(ValueError, match=r"crowd\[0\].*VOID"):
        metric.update_state(gt, gt, crowd=crowd)


def test_bad_category_spec(tmp_path):
    with pytest.raises(ValueError, match="categories"):
        PanopticQuality([])
    with pytest.raises(ValueError, match=r"categories\[1\]\['id'\].*duplicate id 1"):
        PanopticQuality([{"id": 1, "isthing": 1}, {"id": 1, "isthing": 0}])
    with pytest.raises(ValueError, match=r"categories\[0\]\['id'\].*got 0"):
        PanopticQuality([{"id": 0, "isthing": 1}])
    path = tmp_path / "cats.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="categories"):
        PanopticQuality(path)
    with pytest.raises(ValueError, match="sample_weight"):
        PanopticQuality(CATS).update_state(_scene(), _scene(),
                                           sample_weight=np.ones(1))


def test_bad_coco_inputs():
    metric = PanopticQuality(CATS)
    gt_ids = np.zeros((4, 4), np.int64)
    gt_ids[:2] = 7
    gt_info = [{"id": 7, "category_id": 8, "iscrowd": 0, "area": 8}]
    pred_ids = gt_ids.copy()
    with pytest.raises(ValueError, match=r"pred_ids.*\[7\].*not in segments_info"):
        metric.update_state_from_coco(gt_ids, gt_info, pred_ids, [])
    with pytest.raises(ValueError, match=r"pred_ids.*\[12\].*not in the map"):
        metric.update_state_from_coco(
            gt_ids, gt_info, pred_ids,
            [{"id": 7, "category_id": 8}, {"id": 12, "category_id": 1}])
    with pytest.raises(ValueError, match=r"category_id 4 .*\[1, 3, 8\]"):
        metric.update_state_from_coco(gt_ids, gt_info, pred_ids,
                                      [{"id": 7, "category_id": 4}])
    with pytest.raises(ValueError, match=r"gt_ids.*\[7\].*not in segments_info"):
        metric.update_state_from_coco(gt_ids, [], pred_ids,
                                      [{"id": 7, "category_id": 8}])
    with pytest.raises(ValueError, match=r"pred_ids.*\(4, 3\).*\(4, 4\)"):
        metric.update_state_from_coco(gt_ids, gt_info, pred_ids[:, :3],
                                      [{"id": 7, "category_id": 8}])
    assert metric.num_images == 0
    metric.update_state_from_coco(gt_ids, gt_info, pred_ids,
                                  [{"id": 7, "category_id": 8}])
    assert metric.result()["per_class"][8]["tp"] == 1
