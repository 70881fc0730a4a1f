"""Optimizers and learning-rate schedules of the UViM training recipe.

`BigVisionAdafactor` is big_vision's Adafactor variant together with the rest
of big_vision's optimizer stack (learning-rate multipliers by regex, weight
decay on kernels scaled by the schedule, freezing); `CosineWarmup` is
big_vision's cosine schedule with linear warmup.

>>> from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup
>>> opt = BigVisionAdafactor(
...     learning_rate=CosineWarmup(1e-3, total_steps=10_000, warmup_steps=500),
...     weight_decay=1e-6, lr_multipliers={"guiding_code_lm/encoder/.*": 0.1})
"""

from uvim_keras.optimizers.adafactor import (
    DEFAULT_WEIGHT_DECAY_MULTIPLIERS,
    UVIM_STAGE2_LR_MULTIPLIERS,
    BigVisionAdafactor,
    big_vision_variable_names,
)
from uvim_keras.optimizers.schedule import CosineWarmup

__all__ = [
    "BigVisionAdafactor",
    "CosineWarmup",
    "DEFAULT_WEIGHT_DECAY_MULTIPLIERS",
    "UVIM_STAGE2_LR_MULTIPLIERS",
    "big_vision_variable_names",
]
