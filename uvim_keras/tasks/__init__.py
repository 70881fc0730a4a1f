"""UViM tasks: how labels are encoded, reconstructed and turned into outputs."""

from uvim_keras.tasks.base import UViMTask, label_channel, one_hot, softmax_cross_entropy
from uvim_keras.tasks.colorization import ColorizationTask
from uvim_keras.tasks.depth import DepthTask
from uvim_keras.tasks.panoptic import PanopticTask, panoptic_from_logits

TASKS = {
    "panoptic": PanopticTask,
    "depth": DepthTask,
    "colorization": ColorizationTask,
}


def get_task(name, **kwargs):
    """A task by name ("panoptic", "depth", "colorization")."""
    if name not in TASKS:
        raise ValueError(f"task={name!r}; expected one of {sorted(TASKS)}.")
    return TASKS[name](**kwargs)
