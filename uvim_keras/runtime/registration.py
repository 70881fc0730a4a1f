"""Finding uvim_keras classes by their Keras-registered names.

The preset loader and the checkpoint converters build models without
importing `uvim_keras.models` (which imports them for `from_preset`): they
look the classes up in Keras' registry, as keras-hub's loader does, so the
imports run one way. `import uvim_keras` registers the models, layers and
tasks; the keras-hub classes register when keras-hub is imported
(`uvim_keras.runtime.import_hooks`), which `registered_class(...,
keras_hub=True)` does.

>>> from uvim_keras.runtime.registration import registered_class
>>> UViMStage1 = registered_class("UViMStage1")
"""

import keras

PACKAGE = "uvim_keras"


def registered_class(name, keras_hub=False):
    """The class registered with Keras as `uvim_keras>{name}`.

    Args:
      name: the class name (e.g. "UViMStage1", "GuidingCodeLM", "UViM").
      keras_hub: True for the keras-hub classes (`UViMStage1Backbone`,
        `UViMStage2Task`, ...): imports keras-hub first, which registers them.

    Raises:
      ImportError: keras-hub is wanted and not installed.
      LookupError: nothing is registered under that name (`uvim_keras` was
        not imported).
    """
    if keras_hub:
        try:
            import keras_hub  # noqa: F401  (its import registers uvim_keras.keras_hub_models)
        except ImportError as e:
            raise ImportError(
                "UViM presets need keras-hub (and huggingface-hub for hf:// handles): "
                "pip install 'uvim-keras[hub]'."
            ) from e
    cls = keras.saving.get_registered_object(f"{PACKAGE}>{name}")
    if cls is None:
        raise LookupError(
            f"no class is registered with Keras as '{PACKAGE}>{name}': import uvim_keras "
            "before loading presets or converting checkpoints."
        )
    return cls
