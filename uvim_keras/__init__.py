"""uvim-keras: UViM (Kolesnikov et al., NeurIPS 2022) on Keras 3.

JAX is the project's default backend: when KERAS_BACKEND is unset and Keras
has not been imported yet, importing uvim_keras selects JAX. Set
KERAS_BACKEND=tensorflow or torch (or import and configure Keras first) to
use another backend.
"""

import os as _os
import sys as _sys

if "keras" not in _sys.modules:
    _os.environ.setdefault("KERAS_BACKEND", "jax")

from uvim_keras import layers, tasks
from uvim_keras.models import BaseModel, GuidingCodeLM, Oracle, UViM, UViMStage1
from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask, UViMTask
from uvim_keras.presets import upload_preset  # keras-hub is imported only when used

__version__ = "0.1.0"
