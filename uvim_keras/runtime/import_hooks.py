"""What `import uvim_keras` arranges for modules imported later.

* **keras-hub**: keras-hub resolves a preset's classes through Keras'
  registry, so `keras_hub.models.ImageSegmenter.from_preset(uvim_preset)`
  needs `uvim_keras.keras_hub_models` imported. Importing it with uvim_keras would
  import keras-hub, and with it TensorFlow, into every JAX or torch program;
  instead the classes are registered right after keras-hub's own import,
  whenever that happens (now, if keras-hub is already imported).
* **Quiet TensorFlow**: under the JAX or torch backend TensorFlow is only a
  helper (keras-hub, `tf.data`, `keras.utils.set_random_seed` import it), and
  its C++ start-up lines (absl, oneDNN, `cudart_stub`, `cuInit` on a machine
  without CUDA, `cpu_feature_guard`) are noise. They are printed below
  Python, on file descriptor 2, while TensorFlow loads and first probes its
  devices; both happen with that descriptor pointed at /dev/null.
  `UVIM_KERAS_VERBOSE=1` (the CLI's `--verbose`) keeps them.

Each hook is a `sys.meta_path` finder that steps aside after its module's
first import.

>>> import uvim_keras, keras_hub   # either order: UViM presets load in keras-hub
"""

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys

HUB_MODULE = "uvim_keras.keras_hub_models"
VERBOSE_ENV = "UVIM_KERAS_VERBOSE"


def install(tensorflow_quiet=True):
    """Arranges both hooks (the TensorFlow one only under another backend
    and without `UVIM_KERAS_VERBOSE`); safe to call more than once."""
    if "keras_hub" in sys.modules:
        importlib.import_module(HUB_MODULE)
    else:
        _after_import("keras_hub", lambda module: importlib.import_module(HUB_MODULE))
    if tensorflow_quiet and _quiet_wanted() and "tensorflow" not in sys.modules:
        _around_import("tensorflow", _quiet_native_stderr, _probe_devices)


def keep_tensorflow_logs():
    """Undoes the quiet TensorFlow hook (the CLI's `--verbose`)."""
    os.environ[VERBOSE_ENV] = "1"
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not (isinstance(f, _Hook) and f.name == "tensorflow")]


def _quiet_wanted():
    verbose = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    return not verbose and os.environ.get("KERAS_BACKEND", "jax") != "tensorflow"


def _probe_devices(module):
    module.config.list_physical_devices()  # TF's CUDA probe (cuInit), while quiet


@contextlib.contextmanager
def _quiet_native_stderr():
    """File descriptor 2 to /dev/null (C++ logging), Python's sys.stderr kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _after_import(name, callback):
    _around_import(name, contextlib.nullcontext, callback)


def _around_import(name, context, after):
    """Runs module `name`'s first import inside `context()`, then
    `after(module)` (still inside)."""
    if not any(isinstance(f, _Hook) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook(name, context, after))


class _Hook(importlib.abc.MetaPathFinder):
    """Finds module `name` through the other finders and wraps its loader."""

    def __init__(self, name, context, after):
        self.name, self.context, self.after = name, context, after

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the module is imported once
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrappedLoader(spec.loader, self.context, self.after)
        return spec


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader, context, after):
        self.loader, self.context, self.after = loader, context, after

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with self.context():
            self.loader.exec_module(module)
            self.after(module)
