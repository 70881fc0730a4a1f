"""Long training runs: resumable checkpoints, a NaN/inf stop, TensorBoard logs.

>>> from uvim_keras.training import fit_resumable
>>> fit_resumable(model, make_dataset, workdir="runs/x", total_steps=10_000)

or with your own ``fit`` call:

>>> from uvim_keras.training import ResumableCheckpoint, StopOnNonFinite, TrainingLogger, resume
>>> info = resume(model, "runs/x/checkpoints")       # None on a fresh start
>>> start = 0 if info is None else info.step         # = batches consumed
>>> model.fit(dataset.skip(start), ..., callbacks=[
...     StopOnNonFinite(), ResumableCheckpoint("runs/x/checkpoints", every_n_steps=1000),
...     TrainingLogger("runs/x/logs", every_n_steps=50)])

(`fit_resumable` also builds the model before ``fit``, so that Keras does not
draw a batch and restart a reshuffling dataset; see `uvim_keras.training.run`.)
See `uvim_keras.training.checkpoint` for the format and its guarantees.
"""

from uvim_keras.training.callbacks import (
    NonFiniteLossError,
    ResumableCheckpoint,
    StopOnNonFinite,
    TrainingLogger,
    learning_rate_at,
)
from uvim_keras.training.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointWriteError,
    CorruptCheckpointError,
    is_main_process,
    latest_checkpoint,
    list_checkpoints,
    optimizer_step,
    restore_checkpoint,
    resume,
    save_checkpoint,
)
from uvim_keras.training.run import FitResult, StopAtStep, fit_resumable, position_data

__all__ = [
    "CheckpointError", "CheckpointInfo", "CheckpointWriteError", "CorruptCheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "ResumableCheckpoint", "StopAtStep", "StopOnNonFinite", "TrainingLogger", "fit_resumable",
    "is_main_process", "latest_checkpoint", "learning_rate_at", "list_checkpoints",
    "optimizer_step", "position_data", "restore_checkpoint", "resume", "save_checkpoint",
]
