"""uvim-keras: UViM (Kolesnikov et al., NeurIPS 2022) on Keras 3."""

from uvim_keras import layers, tasks
from uvim_keras.models import BaseModel, GuidingCodeLM, Oracle, UViM, UViMStage1
from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask, UViMTask

__version__ = "0.1.0"
