"""Evaluation metrics of the UViM tasks (host-side numpy behind a Keras API).

* `PanopticQuality`: COCO panoptic quality exactly as panopticapi computes it.
* `DepthMetrics`: NYU depth RMSE / abs_RE / log10 / delta1-3 (big_vision).
* `FID`, `frechet_distance`, `activation_statistics`: pytorch-fid's FID.
* COCO panoptic file helpers: `read_panoptic_png`, `write_panoptic_png`,
  `two_channel_to_coco`, `two_channel_gt_to_coco`, `write_coco_panoptic`,
  `evaluate_coco_panoptic`.

Importing this package needs keras, numpy and pillow only (no tensorflow);
the Inception extractor of `FID` is built lazily, on first use.
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
from uvim_keras.metrics.inception_features import InceptionFeatureExtractor
from uvim_keras.metrics.inception_features import InceptionWeightsError
from uvim_keras.metrics.panoptic_quality import PanopticQuality

__all__ = [
    "CategorySpec",
    "DepthMetrics",
    "FID",
    "InceptionFeatureExtractor",
    "InceptionWeightsError",
    "PanopticQuality",
    "activation_statistics",
    "evaluate_coco_panoptic",
    "frechet_distance",
    "ids_to_rgb",
    "read_panoptic_png",
    "rgb_to_ids",
    "two_channel_gt_to_coco",
    "two_channel_to_coco",
    "write_coco_panoptic",
    "write_panoptic_png",
]
