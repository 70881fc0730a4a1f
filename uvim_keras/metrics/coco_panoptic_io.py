"""COCO panoptic files: PNG id maps, JSON annotations, evaluation.

A COCO panoptic PNG is RGB uint8 with segment id ``R + 256 G + 256**2 B``
(0 = VOID). The JSON holds ``images``, ``annotations`` (one per image:
``image_id``, ``file_name``, ``segments_info``) and ``categories``.

Example (export predictions, then evaluate them against COCO GT files):

>>> from uvim_keras.metrics import coco_panoptic_io as io
>>> ids, infos = io.two_channel_to_coco(pred_2ch, categories)  # doctest: +SKIP
>>> io.write_coco_panoptic("pred.json", "pred/", [
...     {"image_id": 1, "ids": ids, "segments_info": infos}],
...     categories)                                            # doctest: +SKIP
>>> io.evaluate_coco_panoptic("gt.json", "gt/", "pred.json", "pred/")
... # doctest: +SKIP
"""

import json
import os

import numpy as np
from PIL import Image

from uvim_keras.metrics.categories import CategorySpec
from uvim_keras.metrics.panoptic_quality import PanopticQuality
from uvim_keras.metrics.two_channel import gt_segments
from uvim_keras.metrics.two_channel import pred_segments

MAX_SEGMENT_ID = 256**3 - 1


def rgb_to_ids(rgb):
    """(H, W, 3) uint8 colours -> (H, W) int64 segment ids."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(
            f"rgb: got shape {rgb.shape}; expected (H, W, 3)")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def ids_to_rgb(ids):
    """(H, W) segment ids in [0, 2**24) -> (H, W, 3) uint8 colours."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"ids: got shape {ids.shape} dtype {ids.dtype}; expected an "
            "(H, W) integer map")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(
            f"ids: got segment id {bad}; expected ids in [0, {MAX_SEGMENT_ID}]")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536],
                    axis=-1).astype(np.uint8)


def read_panoptic_png(path):
    """Reads a COCO panoptic PNG as an (H, W) int64 segment-id map."""
    with Image.open(path) as image:
        return rgb_to_ids(np.asarray(image.convert("RGB")))


def write_panoptic_png(path, ids):
    """Writes an (H, W) segment-id map as a COCO panoptic PNG."""
    Image.fromarray(ids_to_rgb(ids)).save(path, format="PNG")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def _segments_info(segments, with_crowd):
    """segments_info entries (ids 1..K in segment order) with area and bbox."""
    k = len(segments)
    h, w = segments.index.shape
    index = segments.index.ravel()
    inf = np.iinfo(np.int64).max
    bounds = np.empty((4, k + 1), dtype=np.int64)
    bounds[:2] = inf
    bounds[2:] = -1
    rows = np.repeat(np.arange(h, dtype=np.int64), w)
    cols = np.tile(np.arange(w, dtype=np.int64), h)
    np.minimum.at(bounds[0], index, rows)
    np.minimum.at(bounds[1], index, cols)
    np.maximum.at(bounds[2], index, rows)
    np.maximum.at(bounds[3], index, cols)
    infos = []
    for j in range(k):
        y0, x0, y1, x1 = bounds[:, j + 1].tolist()
        info = {"id": j + 1,
                "category_id": int(segments.category_id[j]),
                "iscrowd": int(segments.iscrowd[j]) if with_crowd else 0,
                "area": int(segments.area[j]),
                "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1]}
        infos.append(info)
    return infos


def two_channel_to_coco(panoptic, categories, argument="panoptic"):
    """Converts a 2-channel prediction to a COCO id map + ``segments_info``.

    Segments follow panopticapi's 2-channel converter (semantic 0 = VOID,
    instance channel ignored for stuff, thing instance 0 is an ordinary
    instance). Segment ids are 1..K in (category id, instance id) order; like
    the converter's random colours they carry no meaning.

    Returns:
        (ids, segments_info): (H, W) int64 map and a list of
        ``{id, category_id, iscrowd, area, bbox}``.
    """
    spec = CategorySpec(categories)
    segments = pred_segments(np.asarray(panoptic), spec, argument=argument)
    return segments.index.astype(np.int64), _segments_info(segments, False)


def two_channel_gt_to_coco(panoptic, categories, crowd=None,
                           argument="panoptic"):
    """Converts a 2-channel GT map (+ crowd mask) to COCO id map + infos.

    GT segments are the (category != 0, instance) pairs, listed in
    (category id, instance id) order with ``iscrowd`` from `crowd`.
    """
    spec = CategorySpec(categories)
    segments = gt_segments(np.asarray(panoptic), crowd, spec,
                           argument=argument)
    return segments.index.astype(np.int64), _segments_info(segments, True)


def write_coco_panoptic(json_path, png_dir, annotations, categories):
    """Writes COCO panoptic PNGs and the JSON describing them.

    Args:
        json_path: output JSON path.
        png_dir: folder for the PNGs (created if needed).
        annotations: iterable of dicts with ``image_id``, ``ids`` ((H, W)
            segment-id map), ``segments_info`` and optionally ``file_name``
            (default ``f"{image_id:012d}.png"``).
        categories: COCO category list (or a `CategorySpec`).
    """
    spec = CategorySpec(categories)
    os.makedirs(png_dir, exist_ok=True)
    images, entries = [], []
    for ann in annotations:
        image_id = int(ann["image_id"])
        file_name = ann.get("file_name", f"{image_id:012d}.png")
        ids = np.asarray(ann["ids"])
        write_panoptic_png(os.path.join(png_dir, file_name), ids)
        images.append({"id": image_id,
                       "file_name": os.path.splitext(file_name)[0] + ".jpg",
                       "height": int(ids.shape[0]),
                       "width": int(ids.shape[1])})
        entries.append({"image_id": image_id, "file_name": file_name,
                        "segments_info": list(ann["segments_info"])})
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": entries,
                   "categories": spec.to_list()}, f)


def evaluate_coco_panoptic(gt_json, gt_dir, pred_json, pred_dir,
                           categories=None):
    """panopticapi's ``pq_compute`` on COCO panoptic files.

    Every GT annotation must have a prediction with the same ``image_id``
    (extra predictions are ignored, as in panopticapi).

    Args:
        gt_json, pred_json: paths to the COCO panoptic JSON files (or the
            already loaded dicts).
        gt_dir, pred_dir: folders with the PNGs named by ``file_name``.
        categories: category list, JSON path or `CategorySpec`; default: the
            ``categories`` of `gt_json`.

    Returns:
        The `PanopticQuality.result()` dict.
    """
    gt = gt_json if isinstance(gt_json, dict) else read_json(gt_json)
    pred = pred_json if isinstance(pred_json, dict) else read_json(pred_json)
    if categories is None:
        categories = gt["categories"]
    metric = PanopticQuality(categories)
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    for gt_ann in gt["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise ValueError(
                f"pred_json: no annotation for image_id {image_id}; expected "
                "one prediction per GT image")
        pred_ann = pred_by_image[image_id]
        gt_ids = read_panoptic_png(os.path.join(gt_dir, gt_ann["file_name"]))
        pred_ids = read_panoptic_png(
            os.path.join(pred_dir, pred_ann["file_name"]))
        metric.update_state_from_coco(gt_ids, gt_ann["segments_info"],
                                      pred_ids, pred_ann["segments_info"])
    return metric.result()
