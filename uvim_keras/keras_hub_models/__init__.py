"""keras-hub classes behind UViM presets (this package imports keras-hub).

* `UViMStage1Backbone` (`backbone.py`): the stage-I model, keras-hub's
  backbone of every UViM preset (`config.json`, `model.weights.h5`).
* `UViMImageSegmenter`, `UViMDepthEstimator`, `UViMColorizer` and their base
  `UViMStage2Task` (`tasks.py`): a complete UViM as keras-hub's task of its
  kind, the stage-II LM in `task.json` / `task.weights.h5`.
* Their preprocessors and image converter (`preprocessing.py`,
  `preprocessor.json`): raw images of any size -> the model's input.

`import uvim_keras` registers these classes with Keras as soon as keras-hub
is imported (`uvim_keras.runtime.import_hooks`), so keras-hub's own
`Backbone.from_preset`, `ImageSegmenter.from_preset`,
`DepthEstimator.from_preset` and `ImageToImage.from_preset` load UViM presets.
"""

from uvim_keras.keras_hub_models.backbone import UViMStage1Backbone, stage1_arch_config
from uvim_keras.keras_hub_models.preprocessing import (
    UViMDepthEstimatorPreprocessor,
    UViMImageConverter,
    UViMImageSegmenterPreprocessor,
    UViMPreprocessor,
    image_converter,
)
from uvim_keras.keras_hub_models.tasks import (
    UViMColorizer,
    UViMDepthEstimator,
    UViMImageSegmenter,
    UViMStage2Task,
)

__all__ = [
    "UViMColorizer", "UViMDepthEstimator", "UViMImageConverter",
    "UViMImageSegmenter", "UViMDepthEstimatorPreprocessor", "UViMImageSegmenterPreprocessor",
    "UViMPreprocessor", "UViMStage1Backbone", "UViMStage2Task", "image_converter",
    "stage1_arch_config",
]
