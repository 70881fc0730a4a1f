"""COCO panoptic (``coco/2017_panoptic``) for UViM: tf.data pipelines.

Output examples (the project's panoptic convention, `PanopticTask`):

* ``image``: float32 (size, size, 3) in [-1, 1];
* ``labels``: int32 (label_size, label_size, 2); channel 0 the class in
  [0, 134) -- 0 void, 1..133 the COCO panoptic categories in increasing
  COCO-id order (tensorflow-datasets' ``label`` + 1, as big_vision's
  ``coco_panoptic`` op; `coco_category_to_class` maps raw COCO ids);
  channel 1 the instance id in [0, max_instances);
* ``image_ctx`` (when the label resolution differs from the image's, or on
  request): float32 (label_size, label_size, 3) in [-1, 1];
* optional ``crowd`` (bool, label resolution), ``num_segments`` and
  ``dropped_segments`` (int32), and raw keys such as ``image/id``.

Decisions (following big_vision's UViM panoptic pipeline):

* **Every segment gets an instance id**, things and stuff alike (UViM's
  output rule gives each instance its majority class, so stuff regions need
  ids too). Void pixels (no segment) are ``(0, 0)``.
* **Ids are canonical**: after all augmentation and resizing, the segments
  still visible are numbered 1, 2, ... in raster order of their centre of
  mass (key ``cy * W + cx``, exact float64 means; ties go to the segment
  whose first pixel comes first in raster order). big_vision's
  ``make_canonical`` uses ``cy * H + cx``: identical on the square label
  maps of every released config.
* **Crowd regions** (``is_crowd``) are kept as ordinary segments with their
  class and their own instance id, as big_vision's ``coco_panoptic`` op does
  (it ignores ``is_crowd``). Panoptic-quality evaluation treats crowd
  specially; ``with_crowd=True`` adds the ``crowd`` mask that
  `uvim_keras.metrics.PanopticQuality.update_state(..., crowd=...)` takes.
* **Instance cap**: instance ids must be < ``max_instances`` (100, the
  width of the instance one-hot), and id 0 is void, so at most
  ``max_instances - 1`` = 99 segments keep their ids (COCO has at most 98 per
  image in train, 78 in validation). Extra segments -- the last ones in
  canonical order, exactly those big_vision's one-hot cannot represent --
  are **dropped**: their pixels become void ``(0, 0)``. Drops are **counted**
  (`InstanceCapStats`, and per example with ``with_stats=True``);
  ``overflow="error"`` raises instead.
* Train: joint horizontal flip, inception box crop, resize (bilinear image,
  nearest labels), value range, canonical ids. Eval: resize, value range,
  canonical ids (``pp_eval`` of ``vqvae_coco_panoptic.py`` /
  ``train_coco_panoptic_pretrained.py``).

Example:

>>> ds = coco_panoptic_dataset("train[4096:]", data_dir="~/tensorflow_datasets",
...                            batch_size=32)                  # stage I, 512
>>> ds2 = coco_panoptic_dataset("train[4096:]", size=1280, label_size=512,
...                             batch_size=32)                 # + image_ctx
"""

import numpy as np
import tensorflow as tf

from uvim_keras.data.tfds_common import (
    INCEPTION_AREA, INCEPTION_ASPECT, check_dtype, check_size, crop_box, decode_uint8_image,
    default_seed, finalize_dataset, inception_box, load_tfds_split, random_flip_lr,
    require_keys, resize_image, resize_labels, split_seed, value_range, want_image_ctx)

#: The 133 COCO panoptic categories (COCO id, name, isthing), in COCO-id order;
#: class ``i + 1`` of the labels is entry ``i``.
COCO_PANOPTIC_CATEGORIES = (
    (1, "person", 1), (2, "bicycle", 1), (3, "car", 1), (4, "motorcycle", 1),
    (5, "airplane", 1), (6, "bus", 1), (7, "train", 1), (8, "truck", 1), (9, "boat", 1),
    (10, "traffic light", 1), (11, "fire hydrant", 1), (13, "stop sign", 1),
    (14, "parking meter", 1), (15, "bench", 1), (16, "bird", 1), (17, "cat", 1),
    (18, "dog", 1), (19, "horse", 1), (20, "sheep", 1), (21, "cow", 1), (22, "elephant", 1),
    (23, "bear", 1), (24, "zebra", 1), (25, "giraffe", 1), (27, "backpack", 1),
    (28, "umbrella", 1), (31, "handbag", 1), (32, "tie", 1), (33, "suitcase", 1),
    (34, "frisbee", 1), (35, "skis", 1), (36, "snowboard", 1), (37, "sports ball", 1),
    (38, "kite", 1), (39, "baseball bat", 1), (40, "baseball glove", 1),
    (41, "skateboard", 1), (42, "surfboard", 1), (43, "tennis racket", 1), (44, "bottle", 1),
    (46, "wine glass", 1), (47, "cup", 1), (48, "fork", 1), (49, "knife", 1), (50, "spoon", 1),
    (51, "bowl", 1), (52, "banana", 1), (53, "apple", 1), (54, "sandwich", 1),
    (55, "orange", 1), (56, "broccoli", 1), (57, "carrot", 1), (58, "hot dog", 1),
    (59, "pizza", 1), (60, "donut", 1), (61, "cake", 1), (62, "chair", 1), (63, "couch", 1),
    (64, "potted plant", 1), (65, "bed", 1), (67, "dining table", 1), (70, "toilet", 1),
    (72, "tv", 1), (73, "laptop", 1), (74, "mouse", 1), (75, "remote", 1),
    (76, "keyboard", 1), (77, "cell phone", 1), (78, "microwave", 1), (79, "oven", 1),
    (80, "toaster", 1), (81, "sink", 1), (82, "refrigerator", 1), (84, "book", 1),
    (85, "clock", 1), (86, "vase", 1), (87, "scissors", 1), (88, "teddy bear", 1),
    (89, "hair drier", 1), (90, "toothbrush", 1),
    (92, "banner", 0), (93, "blanket", 0), (95, "bridge", 0), (100, "cardboard", 0),
    (107, "counter", 0), (109, "curtain", 0), (112, "door-stuff", 0), (118, "floor-wood", 0),
    (119, "flower", 0), (122, "fruit", 0), (125, "gravel", 0), (128, "house", 0),
    (130, "light", 0), (133, "mirror-stuff", 0), (138, "net", 0), (141, "pillow", 0),
    (144, "platform", 0), (145, "playingfield", 0), (147, "railroad", 0), (148, "river", 0),
    (149, "road", 0), (151, "roof", 0), (154, "sand", 0), (155, "sea", 0), (156, "shelf", 0),
    (159, "snow", 0), (161, "stairs", 0), (166, "tent", 0), (168, "towel", 0),
    (171, "wall-brick", 0), (175, "wall-stone", 0), (176, "wall-tile", 0),
    (177, "wall-wood", 0), (178, "water-other", 0), (180, "window-blind", 0),
    (181, "window-other", 0), (184, "tree-merged", 0), (185, "fence-merged", 0),
    (186, "ceiling-merged", 0), (187, "sky-other-merged", 0), (188, "cabinet-merged", 0),
    (189, "table-merged", 0), (190, "floor-other-merged", 0), (191, "pavement-merged", 0),
    (192, "mountain-merged", 0), (193, "grass-merged", 0), (194, "dirt-merged", 0),
    (195, "paper-merged", 0), (196, "food-other-merged", 0), (197, "building-other-merged", 0),
    (198, "rock-merged", 0), (199, "wall-other-merged", 0), (200, "rug-merged", 0),
)
#: Semantic channels including void (`PanopticTask(num_classes=...)`).
COCO_NUM_CLASSES = len(COCO_PANOPTIC_CATEGORIES) + 1
#: Instance channels of the released configs (`PanopticTask(max_instances=...)`).
COCO_MAX_INSTANCES = 100

_COCO_IDS = np.array([c[0] for c in COCO_PANOPTIC_CATEGORIES], np.int64)


def coco_panoptic_categories(coco_ids=False):
    """The category list for `PanopticQuality` on this pipeline's labels.

    ``id`` is the label class (1..133); with ``coco_ids=True`` the original
    COCO id (to compare with COCO's own JSON files).
    """
    return [{"id": int(cid) if coco_ids else i + 1, "name": name, "isthing": thing}
            for i, (cid, name, thing) in enumerate(COCO_PANOPTIC_CATEGORIES)]


def coco_category_to_class(category_ids):
    """COCO panoptic category ids -> label classes 1..133 (numpy int32).

    tensorflow-datasets' ``label`` is ``class - 1``. ValueError on ids that
    are not COCO panoptic categories.

    >>> coco_category_to_class([1, 92, 200]).tolist()
    [1, 81, 133]
    """
    ids = np.asarray(category_ids, np.int64)
    pos = np.searchsorted(_COCO_IDS, ids)
    ok = (pos < len(_COCO_IDS)) & (_COCO_IDS[np.minimum(pos, len(_COCO_IDS) - 1)] == ids)
    if not np.all(ok):
        raise ValueError(f"category ids {sorted(set(ids[~ok].tolist()))} are not COCO "
                         "panoptic categories.")
    return (pos + 1).astype(np.int32)


class InstanceCapStats:
    """Counts what the instance cap drops, across a pipeline's examples.

    Updated inside the tf.data map (``tf.Variable`` counters), so it counts
    examples as the pipeline produces them (prefetched ones included). Log
    it e.g. with ``keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs:
    logs.update(stats.result()))``.

    Example:
    >>> stats = InstanceCapStats()
    >>> ds = coco_panoptic_dataset("train[4096:]", batch_size=32, stats=stats)
    >>> model.fit(ds, steps_per_epoch=1000)
    >>> stats.result()  # {'examples': ..., 'examples_over_cap': 0, 'segments_dropped': 0}
    """

    def __init__(self):
        self.examples = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.examples_over_cap = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.segments_dropped = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self, dropped):
        dropped = tf.cast(dropped, tf.int64)
        return tf.group(
            self.examples.assign_add(1),
            self.examples_over_cap.assign_add(tf.cast(dropped > 0, tf.int64)),
            self.segments_dropped.assign_add(dropped))

    def result(self):
        return {"examples": int(self.examples.numpy()),
                "examples_over_cap": int(self.examples_over_cap.numpy()),
                "segments_dropped": int(self.segments_dropped.numpy())}

    def reset(self):
        for v in (self.examples, self.examples_over_cap, self.segments_dropped):
            v.assign(0)


# -- parsing ------------------------------------------------------------------
def decode_panoptic_ids(panoptic_image):
    """COCO panoptic PNG (uint8 RGB, or its bytes) -> (H, W) int32 segment ids
    ``R + 256 G + 256**2 B`` (0 = no segment)."""
    rgb = tf.cast(decode_uint8_image(panoptic_image, "panoptic_image"), tf.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _objects(example, strict):
    objects = example["panoptic_objects"]
    require_keys(objects, ["id", "label"], "example['panoptic_objects']")
    ids = tf.cast(check_dtype(tf.convert_to_tensor(objects["id"]), ["integer"],
                              "panoptic_objects/id"), tf.int32)
    labels = tf.cast(check_dtype(tf.convert_to_tensor(objects["label"]), ["integer"],
                                 "panoptic_objects/label"), tf.int32)
    crowd = objects.get("is_crowd")
    crowd = (tf.zeros_like(ids, tf.bool) if crowd is None
             else check_dtype(tf.convert_to_tensor(crowd), [tf.bool, "integer"],
                              "panoptic_objects/is_crowd"))
    crowd = tf.cast(crowd, tf.bool)
    if strict:
        n = tf.size(ids)
        checks = [
            tf.debugging.assert_equal(
                tf.size(labels), n, message="panoptic_objects: 'label' and 'id' differ in "
                "length (pass strict=False for tfds.testing.mock_data examples)"),
            tf.debugging.assert_equal(
                tf.size(crowd), n, message="panoptic_objects: 'is_crowd' and 'id' differ "
                "in length (pass strict=False for tfds.testing.mock_data examples)"),
            tf.debugging.assert_equal(
                tf.size(tf.unique(ids).y), n,
                message="panoptic_objects/id holds duplicate segment ids"),
        ]
        with tf.control_dependencies(checks):
            ids = tf.identity(ids)
    else:  # mock data: fields of unequal length -> their common prefix
        n = tf.reduce_min([tf.size(ids), tf.size(labels), tf.size(crowd)])
        ids, labels, crowd = ids[:n], labels[:n], crowd[:n]
    checks = [tf.debugging.assert_non_negative(labels, message="panoptic_objects/label < 0"),
              tf.debugging.assert_less(labels, COCO_NUM_CLASSES - 1,
                                       message="panoptic_objects/label >= 133")]
    with tf.control_dependencies(checks):
        labels = tf.identity(labels)
    return ids, labels, crowd


def parse_coco_panoptic(example, strict=True):
    """A ``coco/2017_panoptic`` example -> raw image and segment maps.

    Args:
      example: dict with ``image`` (uint8 (H, W, 3) or encoded bytes),
        ``panoptic_image`` (uint8 RGB PNG ids, or its bytes) and
        ``panoptic_objects`` {``id``, ``label`` (0..132), ``is_crowd``}.
      strict: check that the object fields have equal lengths and unique ids
        and that the id map has the image's size. ``strict=False`` accepts
        the inconsistent random examples of ``tfds.testing.mock_data``
        (fields cut to their common length, first of duplicate ids wins, id
        map resized to the image, nearest).
    Returns:
      {"image": uint8 (H, W, 3), "labels": int32 (H, W, 2) [class 0..133,
      segment number 1..N in object order, 0 = void], "crowd": bool (H, W)}.
    """
    require_keys(example, ["image", "panoptic_image", "panoptic_objects"], "coco example")
    image = decode_uint8_image(example["image"], "image")
    id_map = decode_panoptic_ids(example["panoptic_image"])
    ids, labels, crowd = _objects(example, strict)
    if strict:
        check = tf.debugging.assert_equal(
            tf.shape(id_map), tf.shape(image)[:2],
            message="panoptic_image and image differ in size")
        with tf.control_dependencies([check]):
            id_map = tf.identity(id_map)
    else:
        id_map = resize_labels(id_map[..., None], tf.shape(image)[:2])[..., 0]
    # Each pixel's segment: the first object whose id equals the pixel id. A
    # sentinel entry (id -1, never a pixel id) keeps the gathers in range
    # when there are no objects.
    order = tf.argsort(ids, stable=True)
    sorted_ids = tf.concat([tf.gather(ids, order), [-1]], 0)
    order = tf.concat([order, [0]], 0)
    labels = tf.concat([labels, [0]], 0)
    crowd = tf.concat([crowd, [False]], 0)
    flat = tf.reshape(id_map, [-1])
    pos = tf.searchsorted(sorted_ids[:-1], flat, side="left")
    found = tf.gather(sorted_ids, pos) == flat
    obj = tf.gather(order, pos)
    segment = tf.where(found, obj + 1, 0)
    sem = tf.where(found, tf.gather(labels, obj) + 1, 0)
    is_crowd = found & tf.gather(crowd, obj)
    shape = tf.shape(id_map)
    return {
        "image": image,
        "labels": tf.reshape(tf.stack([sem, segment], axis=-1), tf.concat([shape, [2]], 0)),
        "crowd": tf.reshape(is_crowd, shape),
    }


# -- canonical instance ids -------------------------------------------------------
def canonicalize_instances(labels, max_instances=COCO_MAX_INSTANCES, overflow="drop"):
    """Renumbers segments 1..K in raster order of their centres; caps them.

    Args:
      labels: int32 (H, W, 2) [class, segment id]; segment id 0 = void, ids
        need not be contiguous.
      max_instances: instance ids must stay below this; segments beyond the
        first ``max_instances - 1`` (canonical order) are set to void.
      overflow: "drop" (set to void, counted in the returned value) or
        "error" (InvalidArgumentError).
    Returns:
      (labels int32 (H, W, 2), num_segments K, num_dropped) -- the last two
      int32 scalars.
    """
    if overflow not in ("drop", "error"):
        raise ValueError(f"overflow={overflow!r}; expected 'drop' or 'error'.")
    labels = tf.convert_to_tensor(labels)
    check_dtype(labels, ["integer"], "labels")
    labels = tf.cast(labels, tf.int32)
    h, w = tf.shape(labels)[0], tf.shape(labels)[1]
    seg = tf.reshape(labels[..., 1], [-1])
    seg = tf.where(seg > 0, seg, 0)
    n = tf.reduce_max(tf.concat([seg, [0]], 0)) + 1
    pix = tf.range(tf.size(seg), dtype=tf.int64)
    w64 = tf.cast(w, tf.int64)
    count = tf.math.unsorted_segment_sum(tf.ones_like(pix), seg, n)
    sum_y = tf.math.unsorted_segment_sum(pix // w64, seg, n)
    sum_x = tf.math.unsorted_segment_sum(pix % w64, seg, n)
    first = tf.math.unsorted_segment_min(pix, seg, n)
    present = tf.where((count > 0) & (tf.range(n) > 0))[:, 0]
    # centre key cy * W + cx = (W * sum_y + sum_x) / count, exactly rounded.
    key = (tf.cast(tf.gather(w64 * sum_y + sum_x, present), tf.float64)
           / tf.cast(tf.gather(count, present), tf.float64))
    by_first = tf.argsort(tf.gather(first, present), stable=True)
    by_key = tf.argsort(tf.gather(key, by_first), stable=True)
    ranked = tf.gather(present, tf.gather(by_first, by_key))
    num = tf.size(ranked)
    new_id = tf.scatter_nd(ranked[:, None], tf.range(1, num + 1), [n])
    cap = max_instances - 1
    dropped = tf.maximum(num - cap, 0)
    if overflow == "error":
        check = tf.debugging.assert_less_equal(
            num, cap, message=f"more than {cap} segments (max_instances={max_instances}, id "
            "0 is void); use overflow='drop' to drop the extra ones")
        with tf.control_dependencies([check]):
            new_id = tf.identity(new_id)
    inst = tf.gather(new_id, seg)
    keep = inst <= cap
    sem = tf.where(keep, tf.reshape(labels[..., 0], [-1]), 0)
    inst = tf.where(keep, inst, 0)
    out = tf.reshape(tf.stack([sem, inst], -1), tf.stack([h, w, 2]))
    return out, num, dropped


# -- preprocessing ------------------------------------------------------------------
def preprocess_coco_panoptic(example, *, train, seed=None, size=512, label_size=None,
                             image_ctx=None, max_instances=COCO_MAX_INSTANCES,
                             overflow="drop", stats=None, with_crowd=False,
                             with_stats=False, extra_keys=(), strict=True,
                             antialias=False, area=INCEPTION_AREA,
                             aspect=INCEPTION_ASPECT):
    """One ``coco/2017_panoptic`` example -> the model's example (module doc).

    Args:
      train: flip + inception crop (True) or none (False).
      seed: stateless seed (int [2]); None draws a random one.
      size: image resolution (int or (h, w)); None keeps the native size.
      label_size: label (and ``image_ctx``) resolution; None = `size`.
      image_ctx: emit ``image_ctx``; None = only when label_size != size.
      max_instances, overflow, stats: the instance cap (module doc);
        `stats` an `InstanceCapStats` to count drops into.
      with_crowd, with_stats: also emit ``crowd`` / the segment counts.
      extra_keys: raw example keys passed through (e.g. "image/id").
      strict: see `parse_coco_panoptic`.
      antialias: antialias the image resizes (the released configs: False).
      area, aspect: the inception box ranges.
    """
    size = check_size(size)
    label_size = size if label_size is None else check_size(label_size, "label_size")
    ctx = want_image_ctx(image_ctx, size, label_size)
    require_keys(example, list(extra_keys), "coco example")
    parsed = parse_coco_panoptic(example, strict=strict)
    image = parsed["image"]
    maps = tf.concat([parsed["labels"], tf.cast(parsed["crowd"], tf.int32)[..., None]], -1)
    if train:
        flip_seed, box_seed = tf.unstack(split_seed(default_seed(seed), 2))
        flipped = random_flip_lr(flip_seed, {"image": image, "maps": maps})
        box = inception_box(tf.shape(flipped["image"]), box_seed, area, aspect)
        image, maps = crop_box(flipped["image"], box), crop_box(flipped["maps"], box)
    out = {}
    if ctx:
        out["image_ctx"] = value_range(resize_image(image, label_size, antialias=antialias))
    out["image"] = value_range(resize_image(image, size, antialias=antialias))
    maps = resize_labels(maps, label_size)
    labels, num, dropped = canonicalize_instances(maps[..., :2], max_instances, overflow)
    out["labels"] = labels
    if stats is not None:
        with tf.control_dependencies([stats.update(dropped)]):
            out["labels"] = tf.identity(out["labels"])
    if with_crowd:
        out["crowd"] = (maps[..., 2] > 0) & (labels[..., 1] > 0)
    if with_stats:
        out["num_segments"], out["dropped_segments"] = num, dropped
    for k in extra_keys:
        out[k] = example[k]
    return out


def coco_panoptic_dataset(split="train", *, data_dir=None, train=None, batch_size=None,
                          size=512, label_size=None, image_ctx=None, seed=0,
                          shuffle_buffer=25_000, repeat=None, drop_remainder=None,
                          num_parallel_calls=None, **preprocess_kwargs):
    """A tf.data pipeline over tensorflow-datasets' ``coco/2017_panoptic``.

    Args:
      split: a tfds split, e.g. "train[4096:]" (big_vision's training split),
        "train[:4096]" (its holdout) or "validation".
      data_dir: where the prepared tfds data live.
      train: augment, shuffle, repeat, drop the last partial batch; default
        ``split`` starts with "train".
      batch_size, size, label_size, image_ctx, seed: see
        `preprocess_coco_panoptic` / `finalize_dataset`. Stage I: size = label
        size = 512; stage II: e.g. size=1280, label_size=512 (adds image_ctx).
      shuffle_buffer: examples (25 000 stage I, 50 000 stage II in big_vision).
      **preprocess_kwargs: max_instances, overflow, stats, with_crowd,
        with_stats, extra_keys, strict, antialias, area, aspect.
    """
    train = split.startswith("train") if train is None else bool(train)
    ds = load_tfds_split("coco/2017_panoptic", split, data_dir, shuffle_files=train, seed=seed)

    def preprocess(example, example_seed):
        return preprocess_coco_panoptic(example, train=train, seed=example_seed, size=size,
                                        label_size=label_size, image_ctx=image_ctx,
                                        **preprocess_kwargs)

    return finalize_dataset(ds, preprocess, train=train, batch_size=batch_size,
                            shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
                            drop_remainder=drop_remainder,
                            num_parallel_calls=num_parallel_calls)


__all__ = [
    "COCO_MAX_INSTANCES", "COCO_NUM_CLASSES", "COCO_PANOPTIC_CATEGORIES", "InstanceCapStats",
    "canonicalize_instances", "coco_category_to_class", "coco_panoptic_categories",
    "coco_panoptic_dataset", "decode_panoptic_ids", "parse_coco_panoptic",
    "preprocess_coco_panoptic",
]
