"""uvim-keras: UViM (Kolesnikov et al., NeurIPS 2022) on Keras 3.

JAX is the project's default backend: when KERAS_BACKEND is unset and Keras
has not been imported yet, importing uvim_keras selects JAX. Set
KERAS_BACKEND=tensorflow or torch (or import and configure Keras first) to
use another backend.

`import uvim_keras` imports the models, layers and tasks, which registers
every uvim_keras class with Keras (`.keras` files and keras-hub presets then
load); the keras-hub classes are registered as soon as keras-hub is imported
(`uvim_keras.runtime.import_hooks`), so TensorFlow is not imported with uvim_keras,
and when something imports it under the JAX or torch backend its C++
start-up logging is kept off the terminal (`UVIM_KERAS_VERBOSE=1` shows it). The one exception is the `uvim-keras` command: it parses its
arguments (and answers `--help` and `--version`) without importing Keras,
and its commands import what they use; there the names below are imported on
first use.
"""

import importlib as _importlib
import os as _os
import sys as _sys

if "keras" not in _sys.modules:
    _os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"

_PUBLIC = {
    "layers": "uvim_keras.layers",
    "tasks": "uvim_keras.tasks",
    "BaseModel": "uvim_keras.models",
    "GuidingCodeLM": "uvim_keras.models",
    "Oracle": "uvim_keras.models",
    "UViM": "uvim_keras.models",
    "UViMStage1": "uvim_keras.models",
    "ColorizationTask": "uvim_keras.tasks",
    "DepthTask": "uvim_keras.tasks",
    "PanopticTask": "uvim_keras.tasks",
    "UViMTask": "uvim_keras.tasks",
    "upload_preset": "uvim_keras.presets",  # keras-hub is imported only when used
}
__all__ = sorted(_PUBLIC)


def _public(name):
    module = _importlib.import_module(_PUBLIC[name])
    return module if _PUBLIC[name] == f"{__name__}.{name}" else getattr(module, name)


def _running_the_command_line():
    argv = getattr(_sys, "argv", None) or [""]
    return _os.path.basename(argv[0]) == "uvim-keras"


if _running_the_command_line():

    def __getattr__(name):
        if name not in _PUBLIC:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = globals()[name] = _public(name)
        return value

else:
    globals().update({name: _public(name) for name in _PUBLIC})

# keras-hub's classes registered when keras-hub loads; TensorFlow loads quietly
# under the other backends (uvim_keras.runtime.import_hooks).
_importlib.import_module("uvim_keras.runtime.import_hooks").install()
