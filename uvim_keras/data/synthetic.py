"""Procedural datasets for training and evaluating UViM on a CPU in minutes.

Three seeded, deterministic generators, no downloads:

* `make_panoptic_shapes`: textured sky/ground stuff + disc/square/triangle
  things with occlusion; labels int32 (N, H, W, 2) [class, instance].
* `make_depth_scenes`: ray-traced rooms with spheres and boxes; labels
  float32 (N, H, W, 1) analytic z-depth in metres.
* `make_colorization_shapes`: objects with equal-luminance hues; the image
  is the grey version of the RGB labels (N, H, W, 3) in [-1, 1].

Each returns ``{"image": float32 (N, H, W, 3) in [-1, 1], "labels": ...}``.
Example ``i`` depends only on ``(seed, i)``: generating examples 0..99 at
once or one by one (``start=i, num_examples=1``) gives identical arrays.
`SYNTHETIC_TASKS` lists, per task, the generator, its label format and the
suggested task keyword arguments.

Example:

>>> from uvim_keras.data import SYNTHETIC_TASKS, as_tf_dataset
>>> from uvim_keras.tasks import get_task
>>> spec = SYNTHETIC_TASKS["panoptic"]
>>> task = get_task("panoptic", **spec["task_kwargs"])
>>> train = spec["generator"](256, size=64, seed=0)
>>> val = spec["generator"](64, size=64, seed=1)
>>> task.check_labels(train["labels"], image_size=(64, 64))
>>> ds = as_tf_dataset(train, batch_size=32, shuffle=True, repeat=True)
"""

import numpy as np

from uvim_keras.data.synthetic_color import (
    COLOR_PALETTE, PALETTE_LUMINANCE, make_colorization_shapes,
    render_colorization, sample_colorization_scenes)
from uvim_keras.data.synthetic_common import LUMA_WEIGHTS, check_int, luminance
from uvim_keras.data.synthetic_depth import (
    MAX_DEPTH, MIN_DEPTH, analytic_depth, make_depth_scenes, render_depth,
    sample_depth_scenes)
from uvim_keras.data.synthetic_panoptic import (
    DEFAULT_MAX_OBJECTS as PANOPTIC_MAX_OBJECTS, PANOPTIC_CATEGORIES,
    PANOPTIC_NUM_CLASSES, make_panoptic_shapes, render_panoptic,
    sample_panoptic_scenes)

#: Names of the synthetic panoptic classes 0..5 (0 = void), PanopticTask's
#: `class_names`: pictures of predictions name the classes with them.
PANOPTIC_CLASS_NAMES = ("void",) + tuple(
    c["name"] for c in sorted(PANOPTIC_CATEGORIES, key=lambda c: c["id"]))
assert [c["id"] for c in sorted(PANOPTIC_CATEGORIES, key=lambda c: c["id"])] == list(
    range(1, PANOPTIC_NUM_CLASSES))

#: Per task: generator (num_examples, size=64, seed=0, start=0, ...) -> dict of
#: numpy arrays; label format; kwargs for ``uvim_keras.tasks.get_task``.
SYNTHETIC_TASKS = {
    "panoptic": {
        "generator": make_panoptic_shapes,
        "label_format": "int32 (N, H, W, 2): [semantic class in [0, 6) with 0 = void "
                        "(1 sky, 2 ground, 3 disc, 4 square, 5 triangle), instance id "
                        "(every segment, stuff regions included, numbered 1.. in raster order of "
                        "visible centres)]",
        "label_dtype": "int32",
        "label_channels": 2,
        "task_kwargs": {"num_classes": PANOPTIC_NUM_CLASSES,
                        "max_instances": PANOPTIC_MAX_OBJECTS + 3,
                        "class_names": PANOPTIC_CLASS_NAMES},
        "categories": PANOPTIC_CATEGORIES,
        "metric_options": {"categories": PANOPTIC_CATEGORIES},
        "card_metrics": ("PQ",),
    },
    "depth": {
        "generator": make_depth_scenes,
        "label_format": f"float32 (N, H, W, 1): z-depth in metres within "
                        f"({MIN_DEPTH}, {MAX_DEPTH}) (about 1.3 to 8.7)",
        "label_dtype": "float32",
        "label_channels": 1,
        # 64 bins of 0.16 m (rounding adds about 0.05 m RMSE): the depth heads of
        # the demo's small models cost half as much as with 128 bins.
        "task_kwargs": {"bins": 64, "min_depth": MIN_DEPTH, "max_depth": MAX_DEPTH},
        "card_metrics": ("RMSE",),
    },
    "colorization": {
        "generator": make_colorization_shapes,
        "label_format": "float32 (N, H, W, 3): RGB in [-1, 1]; image = luminance "
                        "(0.299 R + 0.587 G + 0.114 B) replicated to 3 channels",
        "label_dtype": "float32",
        "label_channels": 3,
        "task_kwargs": {},
        "card_metrics": ("colourfulness", "MSE", "colourfulness_ground_truth"),
    },
}


def _check_task(task):
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task={task!r}; expected one of {sorted(SYNTHETIC_TASKS)}.")
    return SYNTHETIC_TASKS[task]


def make_synthetic(task, num_examples, size=64, seed=0, **kwargs):
    """Numpy arrays of the synthetic dataset of `task` (a SYNTHETIC_TASKS key).

    >>> make_synthetic("depth", 2, size=16)["labels"].shape
    (2, 16, 16, 1)
    """
    return _check_task(task)["generator"](num_examples, size=size, seed=seed, **kwargs)


def _check_arrays(arrays):
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"arrays: got {type(arrays).__name__}; expected a non-empty "
                         "dict of arrays with a common first dimension.")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays: first dimensions differ: {lengths}.")
    return next(iter(lengths.values()))


def as_tf_dataset(arrays, batch_size=None, shuffle=False, seed=0, repeat=False,
                  drop_remainder=False):
    """A ``tf.data.Dataset`` of dicts from a dict of equal-length arrays.

    Args:
        arrays: e.g. the output of a generator ({"image": ..., "labels": ...}).
        batch_size: positive batch size, or None for single examples.
        shuffle: shuffle over the whole set (reshuffled every epoch,
            deterministically from `seed`).
        seed: shuffle seed (non-negative integer).
        repeat: repeat forever.
        drop_remainder: drop a last, smaller batch.

    TensorFlow is imported here only.

    >>> ds = as_tf_dataset(make_colorization_shapes(10, size=16), batch_size=4)
    >>> [b["image"].shape[0] for b in ds.as_numpy_iterator()]
    [4, 4, 2]
    """
    n = _check_arrays(arrays)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, 0)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({k: np.asarray(v) for k, v in arrays.items()})
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def synthetic_dataset(task, num_examples, batch_size=None, size=64, seed=0, shuffle=False,
                      repeat=False, drop_remainder=False, **kwargs):
    """``as_tf_dataset(make_synthetic(task, num_examples, size, seed, **kwargs), ...)``.

    The data are generated up front (numpy) and the shuffle reuses `seed`.

    >>> ds = synthetic_dataset("panoptic", 8, batch_size=4, size=32)
    >>> next(iter(ds))["labels"].shape
    TensorShape([4, 32, 32, 2])
    """
    arrays = make_synthetic(task, num_examples, size=size, seed=seed, **kwargs)
    return as_tf_dataset(arrays, batch_size, shuffle=shuffle, seed=seed, repeat=repeat,
                         drop_remainder=drop_remainder)


__all__ = [
    "COLOR_PALETTE", "LUMA_WEIGHTS", "MAX_DEPTH", "MIN_DEPTH", "PALETTE_LUMINANCE",
    "PANOPTIC_CATEGORIES", "PANOPTIC_CLASS_NAMES", "PANOPTIC_NUM_CLASSES", "SYNTHETIC_TASKS",
    "analytic_depth", "as_tf_dataset", "luminance", "make_colorization_shapes", "make_depth_scenes",
    "make_panoptic_shapes", "make_synthetic", "render_colorization", "render_depth",
    "render_panoptic", "sample_colorization_scenes", "sample_depth_scenes",
    "sample_panoptic_scenes", "synthetic_dataset",
]
