"""Evaluation metrics of the UViM tasks (host-side numpy behind a Keras API).

* `PanopticQuality`: COCO panoptic quality exactly as panopticapi computes it.
* `DepthMetrics`: NYU depth RMSE / abs_RE / log10 / delta1-3 (big_vision).
* `FID`, `frechet_distance`, `activation_statistics`: pytorch-fid's FID;
  its default features come from `fid_inception_v3`, pytorch-fid's FID
  Inception network (`FIDInceptionFeatureExtractor`, `load_fid_inception`,
  `convert_pth_to_npz`); `InceptionFeatureExtractor` is Keras'
  Inception-v3 alternative.
* COCO panoptic file helpers: `read_panoptic_png`, `write_panoptic_png`,
  `two_channel_to_coco`, `two_channel_gt_to_coco`, `write_coco_panoptic`,
  `evaluate_coco_panoptic`.

Importing this package needs keras, numpy and pillow only (no tensorflow);
the Inception extractors of `FID` are built lazily, on first use.
"""

from uvim_keras.metrics.categories import CategorySpec
from uvim_keras.metrics.coco_panoptic_io import evaluate_coco_panoptic
from uvim_keras.metrics.coco_panoptic_io import ids_to_rgb
from uvim_keras.metrics.coco_panoptic_io import read_panoptic_png
from uvim_keras.metrics.coco_panoptic_io import rgb_to_ids
from uvim_keras.metrics.coco_panoptic_io import two_channel_gt_to_coco
from uvim_keras.metrics.coco_panoptic_io import two_channel_to_coco
from uvim_keras.metrics.coco_panoptic_io import write_coco_panoptic
from uvim_keras.metrics.coco_panoptic_io import write_panoptic_png
from uvim_keras.metrics.depth import DepthMetrics
from uvim_keras.metrics.fid import FID
from uvim_keras.metrics.fid import activation_statistics
from uvim_keras.metrics.fid import frechet_distance
from uvim_keras.metrics.fid_inception import fid_inception_v3
from uvim_keras.metrics.fid_inception_features import (
    FIDInceptionFeatureExtractor)
from uvim_keras.metrics.fid_inception_weights import FIDInceptionWeightsError
from uvim_keras.metrics.fid_inception_weights import convert_pth_to_npz
from uvim_keras.metrics.fid_inception_weights import load_fid_inception
from uvim_keras.metrics.inception_features import InceptionFeatureExtractor
from uvim_keras.metrics.inception_features import InceptionWeightsError
from uvim_keras.metrics.panoptic_quality import PanopticQuality

__all__ = [
    "CategorySpec",
    "DepthMetrics",
    "FID",
    "FIDInceptionFeatureExtractor",
    "FIDInceptionWeightsError",
    "InceptionFeatureExtractor",
    "InceptionWeightsError",
    "PanopticQuality",
    "activation_statistics",
    "convert_pth_to_npz",
    "evaluate_coco_panoptic",
    "fid_inception_v3",
    "frechet_distance",
    "ids_to_rgb",
    "load_fid_inception",
    "read_panoptic_png",
    "rgb_to_ids",
    "two_channel_gt_to_coco",
    "two_channel_to_coco",
    "write_coco_panoptic",
    "write_panoptic_png",
]
