"""COCO panoptic segment-id maps + ``segments_info`` -> compact segments.

This is the path that reproduces panopticapi on COCO files exactly:

* GT segments keep their ``segments_info`` order (panopticapi keeps the *last*
  crowd segment of a category in that order) and their JSON ``area``.
* Predicted areas are pixel counts. Every predicted id in the map must be in
  ``segments_info`` and the reverse, and every predicted category must be in
  the spec (panopticapi raises there too). Duplicate predicted ids (the
  2-channel converter writes one entry per (category, instance) pair of a
  stuff class) collapse to one segment, the last entry winning.
"""

import numpy as np

from uvim_keras.metrics.two_channel import Segments


def _id_map(ids, argument):
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(
            f"{argument}: got shape {ids.shape}; expected an (H, W) map of "
            "COCO segment ids")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"{argument}: got dtype {ids.dtype}; expected integer segment ids")
    return ids


def _lookup(id_map, seg_ids, argument):
    """Maps segment ids to 1-based positions in `seg_ids`; 0 stays VOID."""
    order = np.argsort(seg_ids, kind="stable")
    sorted_ids = seg_ids[order]
    pos = np.searchsorted(sorted_ids, id_map)
    if len(seg_ids):
        np.minimum(pos, len(seg_ids) - 1, out=pos)
        found = sorted_ids[pos] == id_map
    else:
        found = np.zeros(id_map.shape, dtype=bool)
    void = id_map == 0
    unknown = ~(found | void)
    if unknown.any():
        bad = np.unique(id_map[unknown])
        raise ValueError(
            f"{argument}: segment ids {bad[:10].tolist()} appear in the map but "
            "not in segments_info; expected every non-zero id to be listed")
    index = np.where(void, 0, order[pos] + 1) if len(seg_ids) else \
        np.zeros(id_map.shape, dtype=np.int64)
    return index


def _categories(infos, spec, argument):
    cats = np.array([int(s["category_id"]) for s in infos], dtype=np.int64)
    if cats.size and (cats.min() <= 0 or cats.max() > spec.max_id
                      or not spec.allowed_lut[cats].all()):
        bad = [c for c in cats.tolist()
               if c <= 0 or c > spec.max_id or not spec.allowed_lut[c]][0]
        raise ValueError(
            f"{argument}: category_id {bad} is not in the category spec; "
            f"expected one of {spec.ids.tolist()}")
    return cats


def coco_gt_segments(id_map, segments_info, spec, argument="gt_ids"):
    """GT segments from a COCO id map and its ``segments_info`` list."""
    id_map = _id_map(id_map, argument)
    infos = list(segments_info)
    seg_ids = np.array([int(s["id"]) for s in infos], dtype=np.int64)
    if len(np.unique(seg_ids)) != len(seg_ids):
        raise ValueError(
            f"{argument} segments_info: got duplicate segment ids; expected "
            "distinct GT ids")
    if (seg_ids <= 0).any():
        raise ValueError(
            f"{argument} segments_info: got segment id "
            f"{int(seg_ids[seg_ids <= 0][0])}; expected ids > 0 (0 is VOID)")
    cats = _categories(infos, spec, f"{argument} segments_info")
    index = _lookup(id_map, seg_ids, argument)
    counted = np.bincount(index.ravel(), minlength=len(infos) + 1)[1:]
    area = np.array([int(s["area"]) if "area" in s else int(counted[k])
                     for k, s in enumerate(infos)], dtype=np.int64)
    iscrowd = np.array([bool(s.get("iscrowd", 0)) for s in infos], dtype=bool)
    return Segments(index, cats, np.zeros(len(infos), dtype=np.int64), area,
                    iscrowd)


def coco_pred_segments(id_map, segments_info, spec, argument="pred_ids"):
    """Predicted segments from a COCO id map and its ``segments_info`` list."""
    id_map = _id_map(id_map, argument)
    by_id = {}
    for s in segments_info:
        by_id[int(s["id"])] = s
    infos = list(by_id.values())
    seg_ids = np.array(list(by_id.keys()), dtype=np.int64)
    cats = _categories(infos, spec, f"{argument} segments_info")
    index = _lookup(id_map, seg_ids, argument)
    area = np.bincount(index.ravel(), minlength=len(infos) + 1)[1:]
    if (area == 0).any():
        missing = seg_ids[area == 0]
        raise ValueError(
            f"{argument}: segment ids {missing[:10].tolist()} are in "
            "segments_info but not in the map; expected every listed id to "
            "cover at least one pixel")
    return Segments(index, cats, np.zeros(len(infos), dtype=np.int64),
                    area.astype(np.int64), np.zeros(len(infos), dtype=bool))
