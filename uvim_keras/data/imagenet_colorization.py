"""ImageNet colorization (``imagenet2012``) for UViM: tf.data pipelines.

Output examples (the project's colorization convention, `ColorizationTask`):

* ``image``: the grey input, float32 (size, size, 3) in [-1, 1]: BT.601
  luminance (the project's `LUMA_WEIGHTS`) replicated to 3 channels;
* ``labels``: the RGB target, float32 (label_size, label_size, 3) in [-1, 1];
* ``image_ctx`` when the label resolution differs from the image's (or on
  request): the grey image at label resolution.

Train (``vqvae_imagenet2012_colorization.py``): inception crop (5%..100% of
the area, aspect 0.75..1.33) resized to `size` (bilinear), random horizontal
flip, grey input; stage II resizes the target to `label_size` (nearest) and
the grey image to `label_size` (bilinear) for ``image_ctx``, from the image
at `size`, as big_vision does.

Eval, ``eval_mode``:

* ``"coltran"`` (default; the ColTran FID-5k protocol of big_vision's
  ``coltran_fid`` evaluator): the largest **centred square crop**, resized to
  `size` with area interpolation and antialiasing, rounded to integers;
  ``coltran_scale=True`` maps [0, 255] with ``x / 128 - 1`` as that
  evaluator does (default: the training range, ``x / 127.5 - 1``);
* ``"resize"``: the released configs' ``pp_eval`` (validation loss, PSNR):
  the whole image resized to `size` x `size` (bilinear), no crop.

Example:

>>> ds = imagenet_colorization_dataset("train[4096:]", batch_size=64)
>>> val = imagenet_colorization_dataset("validation", batch_size=8)   # ColTran
"""

import tensorflow as tf

from uvim_keras.data.tfds_common import (
    INCEPTION_AREA, INCEPTION_ASPECT, central_square_crop, check_size, crop_box,
    decode_uint8_image, default_seed, finalize_dataset, grey_rgb, inception_box,
    load_tfds_split, random_flip_lr, require_keys, resize_image, resize_labels, split_seed,
    value_range, want_image_ctx)

EVAL_MODES = ("coltran", "resize")


def preprocess_imagenet_colorization(example, *, train, seed=None, size=512, label_size=None,
                                     image_ctx=None, eval_mode="coltran",
                                     coltran_scale=False, extra_keys=(), antialias=False,
                                     area=INCEPTION_AREA, aspect=INCEPTION_ASPECT):
    """One ``imagenet2012`` example -> {image (grey), labels (RGB), ...}.

    Args:
      train: inception crop + flip (True) or the `eval_mode` protocol.
      seed: stateless seed (int [2]); None draws a random one.
      size: image resolution; None keeps the native size (eval only).
      label_size: target (and ``image_ctx``) resolution; None = `size`.
      image_ctx: emit ``image_ctx``; None = only when label_size != size.
      eval_mode, coltran_scale: see the module doc.
      extra_keys: raw example keys passed through (e.g. "file_name").
      antialias: antialias the bilinear resizes (released configs: False).
      area, aspect: the inception crop ranges.
    """
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode={eval_mode!r}; expected one of {EVAL_MODES}.")
    size = check_size(size, allow_none=not train)
    label_size = size if label_size is None else check_size(label_size, "label_size")
    ctx = want_image_ctx(image_ctx, size, label_size)
    require_keys(example, ["image"] + list(extra_keys), "imagenet2012 example")
    image = decode_uint8_image(example["image"], "image")
    in_max = 255.0
    if train:
        flip_seed, box_seed = tf.unstack(split_seed(default_seed(seed), 2))
        box = inception_box(tf.shape(image), box_seed, area, aspect)
        rgb = resize_image(crop_box(image, box), size, antialias=antialias)
        rgb = random_flip_lr(flip_seed, {"rgb": rgb})["rgb"]
    elif eval_mode == "coltran":
        rgb = central_square_crop(image)
        if size is not None:
            rgb = tf.round(resize_image(rgb, size, method="area", antialias=True))
        rgb = tf.cast(rgb, tf.float32)
        if coltran_scale:  # maps x to x / 128 - 1
            in_max = 256.0
    else:
        rgb = resize_image(image, size, antialias=antialias)
    grey = grey_rgb(rgb)
    out = {}
    if ctx:
        ctx_grey = resize_image(grey, label_size, antialias=antialias)
        out["image_ctx"] = value_range(ctx_grey, in_max=in_max)
    out["image"] = value_range(grey, in_max=in_max)
    out["labels"] = value_range(resize_labels(rgb, label_size), in_max=in_max)
    for k in extra_keys:
        out[k] = example[k]
    return out


def imagenet_colorization_dataset(split="train", *, data_dir=None, train=None,
                                  batch_size=None, size=512, label_size=None, image_ctx=None,
                                  seed=0, shuffle_buffer=25_000, repeat=None,
                                  drop_remainder=None, num_parallel_calls=None,
                                  **preprocess_kwargs):
    """A tf.data pipeline over tensorflow-datasets' ``imagenet2012``.

    Args:
      split: e.g. "train[4096:]" (big_vision's training split), "train[:4096]"
        (its holdout), "validation" (ColTran evaluation: its first 5 000
        examples in tfds' default read order).
      train: default ``split`` starts with "train".
      Others: see `preprocess_imagenet_colorization` and
        `coco_panoptic_dataset`.
    """
    train = split.startswith("train") if train is None else bool(train)
    ds = load_tfds_split("imagenet2012", split, data_dir, shuffle_files=train, seed=seed)

    def preprocess(example, example_seed):
        return preprocess_imagenet_colorization(
            example, train=train, seed=example_seed, size=size, label_size=label_size,
            image_ctx=image_ctx, **preprocess_kwargs)

    return finalize_dataset(ds, preprocess, train=train, batch_size=batch_size,
                            shuffle_buffer=shuffle_buffer, seed=seed, repeat=repeat,
                            drop_remainder=drop_remainder,
                            num_parallel_calls=num_parallel_calls)


__all__ = ["EVAL_MODES", "imagenet_colorization_dataset", "preprocess_imagenet_colorization"]
