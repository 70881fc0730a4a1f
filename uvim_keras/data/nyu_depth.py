"""NYU depth v2 (``nyu_depth_v2``) for UViM: tf.data pipelines.

Output examples (the project's depth convention, `DepthTask`):

* ``image``: float32 (size, size, 3) in [-1, 1];
* ``labels``: float32 (label_size, label_size, 1), depth in metres (0 where
  the sensor has no depth; `DepthTask` ignores bin 0);
* ``image_ctx`` when the label resolution differs from the image's (or on
  request); ``ground_truth`` (eval, on request): the cropped depth at full
  resolution, float32 (426, 560, 1), for `uvim_keras.metrics` depth metrics.

Train (``vqvae_nyu_depth.py`` / ``train_nyu_depth_pretrained.py``): joint
horizontal flip, inception box crop, resize (bilinear image, nearest depth),
value range. Eval: big_vision's **evaluation crop** of the 480 x 640 frames,
rows 54..479 and columns 41..600 (426 x 560; note the row offset 54 of
big_vision's ``nyu_eval_crop`` op, not the 45 of its comment), then resize.
``image_ctx`` is resized from the cropped full-resolution image (big_vision
resizes it from the image already at `size`; identical when size equals
label_size, as in the released configs).

Example:

>>> ds = nyu_depth_dataset("train", data_dir="~/tensorflow_datasets", batch_size=32)
>>> val = nyu_depth_dataset("validation", batch_size=8)       # eval crop
"""

import tensorflow as tf

from uvim_keras.data.tfds_common import (
    INCEPTION_AREA, INCEPTION_ASPECT, check_dtype, check_size, crop_box, decode_uint8_image,
    default_seed, finalize_dataset, inception_box, load_tfds_split, random_flip_lr,
    require_keys, resize_image, resize_labels, split_seed, value_range, want_image_ctx)

#: Depth range of the released configs and evaluator (metres).
NYU_MIN_DEPTH, NYU_MAX_DEPTH = 1e-3, 10.0
#: big_vision's evaluation crop: rows [54, 480), columns [41, 601) of 480 x 640.
NYU_EVAL_CROP = (54, 480, 41, 601)
NYU_FRAME = (480, 640)


def parse_nyu_depth(example):
    """``{image uint8 (H, W, 3), depth float (H, W)}`` ->
    ``{image uint8, labels float32 (H, W, 1)}``; ValueError on a missing key
    or non-float depth."""
    require_keys(example, ["image", "depth"], "nyu_depth_v2 example")
    image = decode_uint8_image(example["image"], "image")
    depth = check_dtype(tf.convert_to_tensor(example["depth"]), ["floating"], "depth")
    if depth.shape.rank is not None and depth.shape.rank not in (2, 3):
        raise ValueError(f"depth has rank {depth.shape.rank}; expected (H, W) or (H, W, 1).")
    depth = tf.cast(depth, tf.float32)
    if depth.shape.rank == 2:
        depth = depth[..., None]
    check = tf.debugging.assert_equal(tf.shape(depth)[:2], tf.shape(image)[:2],
                                      message="depth and image differ in size")
    with tf.control_dependencies([check]):
        depth = tf.identity(depth)
    return {"image": image, "labels": depth}


def nyu_eval_crop(tensor):
    """big_vision's NYU evaluation crop of a 480 x 640 (H, W, C) tensor."""
    check = tf.debugging.assert_equal(
        tf.shape(tensor)[:2], NYU_FRAME,
        message="the NYU eval crop needs 480 x 640 frames")
    r0, r1, c0, c1 = NYU_EVAL_CROP
    with tf.control_dependencies([check]):
        return tensor[r0:r1, c0:c1]


def preprocess_nyu_depth(example, *, train, seed=None, size=512, label_size=None,
                         image_ctx=None, eval_crop=True, with_ground_truth=False,
                         extra_keys=(), antialias=False, area=INCEPTION_AREA,
                         aspect=INCEPTION_ASPECT):
    """One ``nyu_depth_v2`` example -> the model's example (module doc).

    Args:
      train: flip + inception crop (True) or the eval crop (False).
      seed: stateless seed (int [2]); None draws a random one.
      size: image resolution; None keeps the native size.
      label_size: depth (and ``image_ctx``) resolution; None = `size`.
      image_ctx: emit ``image_ctx``; None = only when label_size != size.
      eval_crop: apply the evaluation crop when not training.
      with_ground_truth: also emit the (cropped) full-resolution depth.
      extra_keys: raw example keys passed through.
      antialias, area, aspect: as in `preprocess_coco_panoptic`.
    """
    size = check_size(size)
    label_size = size if label_size is None else check_size(label_size, "label_size")
    ctx = want_image_ctx(image_ctx, size, label_size)
    require_keys(example, list(extra_keys), "nyu_depth_v2 example")
    parsed = parse_nyu_depth(example)
    image, depth = parsed["image"], parsed["labels"]
    if train:
        flip_seed, box_seed = tf.unstack(split_seed(default_seed(seed), 2))
        flipped = random_flip_lr(flip_seed, {"image": image, "depth": depth})
        box = inception_box(tf.shape(flipped["image"]), box_seed, area, aspect)
        image, depth = crop_box(flipped["image"], box), crop_box(flipped["depth"], box)
    elif eval_crop:
        image, depth = nyu_eval_crop(image), nyu_eval_crop(depth)
    out = {}
    if ctx:
        out["image_ctx"] = value_range(resize_image(image, label_size, antialias=antialias))
    out["image"] = value_range(resize_image(image, size, antialias=antialias))
    out["labels"] = resize_labels(depth, label_size)
    if with_ground_truth:
        out["ground_truth"] = depth
    for k in extra_keys:
        out[k] = example[k]
    return out


def nyu_depth_dataset(split="train", *, data_dir=None, train=None, batch_size=None, size=512,
                      label_size=None, image_ctx=None, seed=0, shuffle_buffer=25_000,
                      repeat=None, drop_remainder=None, num_parallel_calls=None,
                      cache_raw=False, **preprocess_kwargs):
    """A tf.data pipeline over tensorflow-datasets' ``nyu_depth_v2``.

    Args:
      split: "train" (47 584 frames) or "validation" (654, the eval set).
      train: default ``split`` starts with "train".
      cache_raw: keep the raw examples in memory (``ds.cache()``).
      Others: see `preprocess_nyu_depth` and `coco_panoptic_dataset`.
    """
    train = split.startswith("train") if train is None else bool(train)
    ds = load_tfds_split("nyu_depth_v2", split, data_dir, shuffle_files=train, seed=seed)

    def preprocess(example, example_seed):
        return preprocess_nyu_depth(example, train=train, seed=example_seed, size=size,
                                    label_size=label_size, image_ctx=image_ctx,
                                    **preprocess_kwargs)

    return finalize_dataset(ds, preprocess, train=train, batch_size=batch_size,
                            shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
                            drop_remainder=drop_remainder,
                            num_parallel_calls=num_parallel_calls, cache_raw=cache_raw)


__all__ = ["NYU_EVAL_CROP", "NYU_MAX_DEPTH", "NYU_MIN_DEPTH", "nyu_depth_dataset", "nyu_eval_crop",
           "parse_nyu_depth", "preprocess_nyu_depth"]
