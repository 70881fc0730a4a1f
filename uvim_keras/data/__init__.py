"""Datasets: procedural synthetic tasks (see `uvim_keras.data.synthetic`).

>>> from uvim_keras.data import make_panoptic_shapes
>>> make_panoptic_shapes(2, size=32)["image"].shape
(2, 32, 32, 3)
"""

from uvim_keras.data.synthetic import *  # noqa: F401,F403
from uvim_keras.data.synthetic import __all__  # noqa: F401

# tensorflow-datasets pipelines (COCO panoptic, NYU depth, ImageNet
# colorization) and stage-II data: loaded on first use, so that importing
# `uvim_keras.data` does not import TensorFlow.
_LAZY_EXPORTS = {
    "coco_panoptic": (
        "COCO_MAX_INSTANCES", "COCO_NUM_CLASSES", "COCO_PANOPTIC_CATEGORIES",
        "InstanceCapStats", "canonicalize_instances", "coco_category_to_class",
        "coco_panoptic_categories", "coco_panoptic_dataset", "parse_coco_panoptic",
        "preprocess_coco_panoptic"),
    "nyu_depth": (
        "NYU_EVAL_CROP", "NYU_MAX_DEPTH", "NYU_MIN_DEPTH", "nyu_depth_dataset", "nyu_eval_crop",
        "parse_nyu_depth", "preprocess_nyu_depth"),
    "imagenet_colorization": (
        "imagenet_colorization_dataset", "preprocess_imagenet_colorization"),
    "stage2": (
        "Stage2Model", "load_code_shards", "oracle_codes", "precompute_codes"),
}
_LAZY_NAMES = {name: mod for mod, names in _LAZY_EXPORTS.items() for name in names}


def __getattr__(name):
    if name in _LAZY_NAMES:
        import importlib

        module = importlib.import_module(f"uvim_keras.data.{_LAZY_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'uvim_keras.data' has no attribute {name!r}")
