"""Registers uvim_keras' keras-hub classes as soon as keras-hub is imported.

keras-hub resolves a preset's classes through Keras' registry, so
`keras_hub.models.ImageSegmenter.from_preset(uvim_preset)` needs
`uvim_keras.presets.hub` imported first. Importing it with uvim_keras would
import keras-hub, and with it TensorFlow, into every JAX or torch program.
Instead `import uvim_keras` calls `register_with_keras_hub()`: if keras-hub
is already imported, the classes are registered now; otherwise an import hook
registers them right after keras-hub's own import, whenever that happens.

>>> import uvim_keras, keras_hub   # either order
>>> keras_hub.models.ImageSegmenter.from_preset("my_uvim_panoptic_preset")
"""

import importlib
import importlib.abc
import importlib.util
import sys

HUB_MODULE = "uvim_keras.presets.hub"


def register_with_keras_hub():
    """Registers the classes now (keras-hub imported) or when keras-hub is
    imported; a no-op when keras-hub is not installed."""
    if "keras_hub" in sys.modules:
        importlib.import_module(HUB_MODULE)
    elif not any(isinstance(finder, _KerasHubFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasHubFinder())


class _KerasHubFinder(importlib.abc.MetaPathFinder):
    """Finds keras-hub through the other finders and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras_hub":
            return None
        sys.meta_path.remove(self)  # once: keras-hub is imported once
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    """keras-hub's loader, then the import of uvim_keras' keras-hub classes."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        importlib.import_module(HUB_MODULE)
