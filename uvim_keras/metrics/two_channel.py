"""2-channel panoptic maps ([category id, instance id]) -> compact segments.

GT segments: the pixels sharing one (category id, instance id) pair with
category id != 0; segments are numbered in (category id, instance id) order,
the order of ``segments_info`` in the COCO GT files, which fixes panopticapi's
"last crowd segment per category" choice.

Predictions follow panopticapi's 2-channel converter: semantic 0 is VOID
whatever the instance channel holds; for a stuff category the instance
channel is ignored (one segment per stuff category); for a thing category
every distinct instance value, 0 included, is its own segment.

Segment numbering uses a bincount over the combined key
``category * stride + instance`` and a lookup table, so no pixel sort is
needed unless the key range is huge.
"""

import numpy as np

from uvim_keras.metrics.categories import INSTANCE_ID_LIMIT

_MAX_DENSE_KEYS = 1 << 24


class Segments:
    """Compact segments of one image.

    Example:

    >>> from uvim_keras.metrics.categories import CategorySpec
    >>> spec = CategorySpec([{"id": 1, "name": "person", "isthing": 1}])
    >>> seg = pred_segments(np.array([[[1, 0], [1, 4]], [[0, 4], [1, 4]]]),
    ...                     spec)
    >>> seg.index.tolist(), seg.instance_id.tolist(), seg.area.tolist()
    ([[1, 2], [0, 2]], [0, 4], [1, 2])

    Attributes:
        index: (H, W) int map, 0 = VOID, k = segment k (1-based).
        category_id: (K,) COCO category id per segment.
        instance_id: (K,) instance id per segment (0 for predicted stuff).
        area: (K,) pixel count per segment.
        iscrowd: (K,) bool per segment.
    """

    def __init__(self, index, category_id, instance_id, area, iscrowd):
        self.index = index
        self.category_id = category_id
        self.instance_id = instance_id
        self.area = area
        self.iscrowd = iscrowd

    def __len__(self):
        return len(self.category_id)


def _number_segments(category, instance, spec, argument, collapse_stuff,
                     instance_limit=None):
    """Numbers the segments of one image, validating the ids on the way.

    Keys ``category * stride + instance`` are counted with one bincount (or
    np.unique when the key range is huge); ids are checked on the distinct
    keys, not per pixel. With `collapse_stuff`, all keys of a stuff category
    form one segment with instance id 0.

    Returns:
        index map (0 = VOID, k = segment k), category ids, instance ids and
        areas of the segments in (category id, instance id) order.
    """
    empty = np.zeros(0, dtype=np.int64)
    if category.size == 0:
        return np.zeros(category.shape, dtype=np.int32), empty, empty, empty
    cat_arg, inst_arg = f"{argument}[..., 0]", f"{argument}[..., 1]"
    lo, hi = int(category.min()), int(category.max())
    if lo < 0 or hi > spec.max_id:
        spec.check_ids(np.array([lo if lo < 0 else hi]), cat_arg)
    lo, hi = int(instance.min()), int(instance.max())
    if lo < 0:
        raise ValueError(
            f"{inst_arg}: instance id {lo} is negative; expected instance "
            "ids >= 0")
    if instance_limit is not None and hi >= instance_limit:
        raise ValueError(
            f"{inst_arg}: instance id {hi} is too large; expected instance "
            f"ids < {instance_limit} (panopticapi's 2-channel converter "
            "encodes 1000 * category + instance)")
    stride = hi + 1
    key_range = (int(category.max()) + 1) * stride
    dense = key_range <= _MAX_DENSE_KEYS
    if dense:
        key = category.astype(np.int32, copy=False) * np.int32(stride)
        key += instance.astype(np.int32, copy=False)
        counts = np.bincount(key.ravel(), minlength=key_range)
        counts[:stride] = 0  # category 0 is VOID
        present = np.flatnonzero(counts)
        key_area = counts[present]
    else:
        key = category.astype(np.int64) * stride + instance.astype(np.int64)
        key[category == 0] = -1
        present, inverse, key_area = np.unique(
            key.ravel(), return_inverse=True, return_counts=True)
        void_first = bool(present.size and present[0] == -1)
        if void_first:
            present, key_area = present[1:], key_area[1:]
    cats, insts = present // stride, present % stride
    spec.check_ids(cats, cat_arg)
    seg_of_key = np.arange(1, len(present) + 1)
    if collapse_stuff and len(present):
        insts = np.where(spec.isthing_lut[cats], insts, 0)
        first = np.ones(len(present), dtype=bool)
        first[1:] = (cats[1:] != cats[:-1]) | (insts[1:] != insts[:-1])
        seg_of_key = np.cumsum(first)
        key_area = np.bincount(seg_of_key - 1, weights=key_area)
        cats, insts = cats[first], insts[first]
    if dense:
        lut = np.zeros(key_range, dtype=np.int32)
        lut[present] = seg_of_key
        index = lut[key]
    else:
        lut = np.concatenate([[0], seg_of_key]) if void_first else seg_of_key
        index = lut[inverse].reshape(key.shape).astype(np.int32)
    return (index, cats.astype(np.int64), insts.astype(np.int64),
            np.asarray(key_area).astype(np.int64))


def _as_int_channels(panoptic, argument):
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 3 or panoptic.shape[-1] != 2:
        raise ValueError(
            f"{argument}: got shape {panoptic.shape}; expected (H, W, 2) "
            "holding [category id, instance id]")
    if not np.issubdtype(panoptic.dtype, np.integer):
        if not np.all(np.isfinite(panoptic)) or np.any(
                panoptic != np.round(panoptic)):
            raise ValueError(
                f"{argument}: got non-integer values (dtype {panoptic.dtype}); "
                "expected integer category and instance ids")
        panoptic = panoptic.astype(np.int64)
    return panoptic[..., 0], panoptic[..., 1]


def gt_segments(panoptic, crowd, spec, argument="y_true",
                crowd_argument="crowd"):
    """GT segments of one image from a (H, W, 2) map and an optional crowd mask.

    A crowd region is a whole GT thing segment whose pixels are True in
    `crowd`; a segment that is only partly True, or True on VOID pixels,
    raises ValueError.
    """
    category, instance = _as_int_channels(panoptic, argument)
    index, cat_ids, inst_ids, area = _number_segments(
        category, instance, spec, argument, collapse_stuff=False)
    iscrowd = np.zeros(len(cat_ids), dtype=bool)
    if crowd is not None:
        crowd = np.asarray(crowd)
        if crowd.shape != category.shape:
            raise ValueError(
                f"{crowd_argument}: got shape {crowd.shape}; expected "
                f"{category.shape}, the shape of {argument} without its "
                "channel axis")
        crowd = crowd.astype(bool, copy=False)
        if crowd.any():
            crowd_pixels = np.bincount(index[crowd], minlength=len(area) + 1)
            if crowd_pixels[0]:
                raise ValueError(
                    f"{crowd_argument}: {int(crowd_pixels[0])} crowd pixels lie "
                    "on VOID GT pixels; expected crowd only on GT segments")
            crowd_pixels = crowd_pixels[1:]
            partial = (crowd_pixels > 0) & (crowd_pixels != area)
            if partial.any():
                k = int(np.flatnonzero(partial)[0])
                raise ValueError(
                    f"{crowd_argument}: GT segment (category {cat_ids[k]}, "
                    f"instance {inst_ids[k]}) is crowd on {crowd_pixels[k]} of "
                    f"its {area[k]} pixels; expected a whole segment to be "
                    "crowd or not")
            iscrowd = crowd_pixels > 0
    return Segments(index, cat_ids, inst_ids, area, iscrowd)


def pred_segments(panoptic, spec, argument="y_pred"):
    """Predicted segments of one image, as panopticapi's 2-channel converter."""
    category, instance = _as_int_channels(panoptic, argument)
    index, cat_ids, inst_ids, area = _number_segments(
        category, instance, spec, argument, collapse_stuff=True,
        instance_limit=INSTANCE_ID_LIMIT)
    return Segments(index, cat_ids, inst_ids, area,
                    np.zeros(len(cat_ids), dtype=bool))
