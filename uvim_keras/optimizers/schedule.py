"""big_vision's cosine learning-rate schedule with linear warmup."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="uvim_keras")
class CosineWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `learning_rate`, then cosine decay, as big_vision's
    `config.schedule = dict(decay_type="cosine", warmup_steps=...)`.

    At optimizer step `s` (0 for the first update, as in optax):

        progress = clip((s - warmup_steps) / (total_steps - warmup_steps), 0, 1)
        lr(s) = learning_rate * (alpha + (1 - alpha) * 0.5 * (1 + cos(pi * progress)))
                * min(1, s / warmup_steps)        # only when warmup_steps > 0

    With `alpha=0` (the default) this is big_vision's
    `utils.create_learning_rate_schedule(decay_type="cosine")` times
    `config.lr`: it decays to 0 at `total_steps` and the first update (s=0)
    of a warmed-up run has learning rate 0. `alpha > 0` (an addition, not in
    big_vision) decays to `alpha * learning_rate` instead.

    big_vision also accepts `warmup_epochs`/`warmup_examples`; convert them
    to steps first (`round(epochs * data_size / batch_size)`).

    Args:
        learning_rate: peak learning rate, big_vision's `config.lr`.
        total_steps: length of the run in optimizer steps.
        warmup_steps: linear warmup length in steps (0: none).
        alpha: final learning rate as a fraction of `learning_rate`.

    Example (UViM stage II, COCO panoptic):
    >>> steps = 200 * 114_191 // 512  # total_epochs * train images // batch size
    >>> schedule = CosineWarmup(1e-3, total_steps=steps, warmup_steps=4_000)
    >>> [round(float(schedule(s)), 6) for s in (0, 2_000, 4_000, steps)]
    [0.0, 0.0005, 0.001, 0.0]
    """

    def __init__(self, learning_rate, total_steps, warmup_steps=0, alpha=0.0, name=None):
        super().__init__()
        total_steps, warmup_steps = int(total_steps), int(warmup_steps)
        if warmup_steps < 0 or total_steps < 0:
            raise ValueError(
                f"total_steps={total_steps} and warmup_steps={warmup_steps} "
                "must be >= 0."
            )
        # The same check as big_vision (0 and 1 total steps allowed for debugging).
        if total_steps > 1 and warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps={warmup_steps} must be < total_steps={total_steps}."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must lie in [0, 1].")
        self.learning_rate = float(learning_rate)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.alpha = float(alpha)
        self.name = name

    @property
    def base_learning_rate(self):
        """The rate at which the schedule's multiplier is 1 (big_vision's
        `config.lr`); `BigVisionAdafactor` scales weight decay by
        `lr(s) / base_learning_rate`."""
        return self.learning_rate

    def multiplier(self, step):
        """The schedule's value relative to `learning_rate` (in [0, 1])."""
        step = ops.cast(step, "float32")
        span = float(self.total_steps - self.warmup_steps)
        if span == 0.0:  # big_vision divides by zero here (0/1-step runs).
            span = 1.0
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        mult = 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.alpha:
            mult = self.alpha + (1.0 - self.alpha) * mult
        if self.warmup_steps:
            mult = mult * ops.minimum(1.0, step / float(self.warmup_steps))
        return mult

    def __call__(self, step):
        return self.learning_rate * self.multiplier(step)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "alpha": self.alpha,
            "name": self.name,
        }
