"""Building blocks of the tensorflow-datasets pipelines (``tf.data``).

The real-data pipelines (`coco_panoptic`, `nyu_depth`,
`imagenet_colorization`) are assembled from these ops. They reproduce the
preprocessing of big_vision's released UViM configs:

* **inception box** (`inception_box`, `crop_box`): a random box covering
  5%..100% of the image area with aspect ratio in [0.75, 1.33]
  (``tf.image.stateless_sample_distorted_bounding_box``), returned as
  *fractions* of the image so that image and labels of any resolution get
  the same crop;
* **joint horizontal flip** (`random_flip_lr`): one coin, every tensor given;
* **resize** (`resize_image`, `resize_labels`): bilinear for images
  (``antialias=False`` as in the released configs), nearest neighbour for
  labels; images stay float32 (big_vision casts back to uint8 after each
  resize: differences are below one grey level);
* **value range** (`value_range`): [0, 255] -> [-1, 1];
* **image_ctx**: the image at *label* resolution for the stage-I oracle when
  the model's image resolution differs (e.g. panoptic stage II at 1280 with
  labels at 512). It is resized from the same (cropped, flipped) image.

Randomness is stateless: each example's ops draw from a seed derived from
``(seed, position of the example in the stream)`` (`finalize_dataset`), so
a pipeline is reproducible and its augmentations do not depend on
parallelism. Input checks raise ``ValueError`` naming the offending key.
"""

import numpy as np
import tensorflow as tf

from uvim_keras.data.synthetic_common import LUMA_WEIGHTS

#: Inception-crop area fraction and aspect range of the released configs.
INCEPTION_AREA = (0.05, 1.0)
INCEPTION_ASPECT = (0.75, 1.33)


# -- input checks -------------------------------------------------------------
def require_keys(example, keys, what="example"):
    """ValueError naming the missing keys of a dict `example`."""
    if not isinstance(example, dict):
        raise ValueError(f"{what}: got {type(example).__name__}; expected a dict of tensors.")
    missing = [k for k in keys if k not in example]
    if missing:
        raise ValueError(
            f"{what} has no key(s) {missing}; it has {sorted(example)}. Is this the "
            "right tensorflow-datasets builder?")


def check_dtype(tensor, allowed, name):
    """ValueError unless `tensor.dtype` is one of `allowed` (tf dtypes or
    'integer' / 'floating')."""
    dtype = tf.as_dtype(tensor.dtype)
    ok = any(
        (a == "integer" and dtype.is_integer) or (a == "floating" and dtype.is_floating)
        or (not isinstance(a, str) and dtype == tf.as_dtype(a))
        for a in allowed)
    if not ok:
        names = [a if isinstance(a, str) else tf.as_dtype(a).name for a in allowed]
        raise ValueError(f"{name} has dtype {dtype.name}; expected {' or '.join(names)}.")
    return tensor


def decode_uint8_image(image, name, channels=3):
    """A uint8 (H, W, channels) image from a decoded tensor or encoded bytes."""
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    check_dtype(image, [tf.uint8], name)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"{name} has rank {image.shape.rank}; expected (H, W, {channels}).")
    if image.shape[-1] is not None and image.shape[-1] != channels:
        raise ValueError(f"{name} has {image.shape[-1]} channels; expected {channels}.")
    return image


def check_size(size, name="size", allow_none=True):
    """None or a (height, width) pair of positive ints."""
    if size is None:
        if allow_none:
            return None
        raise ValueError(f"{name}=None; expected a positive int or (height, width).")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"{name}={size!r}; expected a positive int or (height, width).")
    return (int(size[0]), int(size[1]))


def want_image_ctx(image_ctx, size, label_size):
    """Whether to emit `image_ctx`: auto (None) -> iff the resolutions differ."""
    if image_ctx is None:
        return label_size is not None and label_size != size
    return bool(image_ctx)


# -- randomness ---------------------------------------------------------------
def example_seed(seed, index):
    """The stateless seed (int64 [2]) of the example at stream position `index`."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])


def split_seed(seed, num):
    """`num` independent stateless seeds (num, 2) from one."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def default_seed(seed):
    """`seed` as int64 [2], or a fresh random one when None."""
    if seed is None:
        return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


# -- geometric ops --------------------------------------------------------------
def random_flip_lr(seed, tensors):
    """Flips every (H, W, ...) tensor of the dict `tensors` left-right, all
    together, with probability 1/2 (one stateless coin from `seed`)."""
    flip = tf.random.stateless_uniform([], seed) > 0.5
    return {k: tf.cond(flip, lambda v=v: tf.reverse(v, axis=[1]), lambda v=v: v)
            for k, v in tensors.items()}


def inception_box(shape, seed, area=INCEPTION_AREA, aspect=INCEPTION_ASPECT):
    """A random inception box as fractions (begin (2,), size (2,)) of `shape`.

    The box covers a fraction `area` of the image with aspect ratio (w / h)
    in `aspect`; when no such box is found in 100 tries, the whole image.
    """
    shape = tf.convert_to_tensor(shape)[:2]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([tf.cast(shape, tf.int32), [1]], axis=0),
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=0.0,
        area_range=area,
        aspect_ratio_range=aspect,
        use_image_if_no_bounding_boxes=True)
    hw = tf.cast(shape, tf.float32)
    return tf.cast(begin[:2], tf.float32) / hw, tf.cast(size[:2], tf.float32) / hw


def crop_box(tensor, box):
    """Crops an (H, W, ...) tensor to a fractional `box` (begin, size)."""
    begin, size = box
    hw = tf.cast(tf.shape(tensor)[:2], tf.float32)
    # Fractions times the size are rounded (not truncated as big_vision does):
    # a box drawn on this very tensor maps back to its exact pixels.
    limit = tf.cast(hw, tf.int32)
    begin = tf.minimum(tf.cast(tf.round(begin * hw), tf.int32), limit - 1)
    size = tf.maximum(tf.cast(tf.round(size * hw), tf.int32), 1)
    size = tf.minimum(size, limit - begin)
    rest = tf.rank(tensor) - 2
    crop = tf.slice(tensor, tf.concat([begin, tf.zeros([rest], tf.int32)], 0),
                    tf.concat([size, -tf.ones([rest], tf.int32)], 0))
    crop.set_shape([None, None] + tensor.shape[2:].as_list())
    return crop


def central_square_crop(tensor):
    """The largest centred square of an (H, W, ...) tensor (ColTran protocol)."""
    h, w = tf.shape(tensor)[0], tf.shape(tensor)[1]
    side = tf.minimum(h, w)
    crop = tf.image.crop_to_bounding_box(tensor, (h - side) // 2, (w - side) // 2, side, side)
    crop.set_shape([None, None] + tensor.shape[2:].as_list())
    return crop


def resize_image(image, size, method="bilinear", antialias=False):
    """(H, W, C) -> float32 (size, C), values clipped to the input's [0, 255]."""
    image = tf.cast(image, tf.float32)
    if size is None:
        return image
    out = tf.image.resize(image, size, method=method, antialias=antialias)
    return tf.clip_by_value(out, 0.0, 255.0)


def resize_labels(labels, size):
    """Nearest-neighbour resize of (H, W, C) labels; keeps the dtype."""
    if size is None:
        return labels
    out = tf.image.resize(labels, size, method="nearest")
    return tf.cast(out, labels.dtype)


def value_range(image, vmin=-1.0, vmax=1.0, in_min=0.0, in_max=255.0):
    """Maps [in_min, in_max] linearly to [vmin, vmax] (float32)."""
    image = (tf.cast(image, tf.float32) - in_min) / (in_max - in_min)
    return vmin + image * (vmax - vmin)


def grey_rgb(image):
    """Luminance (BT.601, the project's `LUMA_WEIGHTS`) replicated to 3 channels."""
    weights = tf.constant(LUMA_WEIGHTS, tf.float32)
    grey = tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1, keepdims=True)
    return tf.tile(grey, [1, 1, 3])


# -- datasets -----------------------------------------------------------------
def load_tfds_split(name, split, data_dir=None, shuffle_files=False, seed=0, decoders=None):
    """`builder.as_dataset` of a prepared tensorflow-datasets builder.

    The data must already be prepared in `data_dir` (e.g. with ``tfds build``;
    ImageNet needs its manual download); tensorflow-datasets' own error says
    so otherwise.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    read_config = tfds.ReadConfig(shuffle_seed=int(seed))
    return builder.as_dataset(split=split, shuffle_files=shuffle_files, decoders=decoders,
                              read_config=read_config)


def finalize_dataset(ds, preprocess, *, train, batch_size=None, shuffle_buffer=10_000,
                     seed=0, repeat=None, drop_remainder=None, num_parallel_calls=None,
                     cache_raw=False):
    """Shuffle, repeat, per-example preprocessing with stateless seeds, batch.

    `preprocess(example, seed)` is mapped over the examples; `seed` is
    ``(seed, index)`` with `index` the example's position in the (shuffled,
    repeated) stream, so the same `seed` gives the same augmentations.

    Args:
      train: defaults of `repeat` (forever) and `drop_remainder` (True) and
        whether to shuffle (buffer `shuffle_buffer`).
      batch_size: None for single examples.
      cache_raw: ``ds.cache()`` the raw examples before shuffling (small
        datasets such as NYU depth).
    """
    repeat = train if repeat is None else repeat
    drop_remainder = train if drop_remainder is None else drop_remainder
    calls = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    if cache_raw:
        ds = ds.cache()
    if train and shuffle_buffer:
        ds = ds.shuffle(int(shuffle_buffer), seed=int(seed), reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate().map(
        lambda i, ex: preprocess(ex, example_seed(seed, i)),
        num_parallel_calls=calls, deterministic=True)
    if batch_size is not None:
        ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


__all__ = [
    "INCEPTION_AREA", "INCEPTION_ASPECT", "central_square_crop", "check_dtype", "check_size",
    "crop_box", "decode_uint8_image", "default_seed", "example_seed", "finalize_dataset",
    "grey_rgb", "inception_box", "load_tfds_split", "random_flip_lr", "require_keys",
    "resize_image", "resize_labels", "split_seed", "value_range", "want_image_ctx",
]
