"""UViM presets: named big_vision releases, keras-hub preset folders, the Hub.

>>> from uvim_keras import UViM, UViMStage1
>>> uvim = UViM.from_preset("panoptic_coco")          # downloaded + converted once
>>> stage1 = UViMStage1.from_preset("depth_nyu_stage1")
>>> uvim.save_to_preset("my_preset")                  # keras-hub layout + model card
>>> uvim_keras.upload_preset("hf://me/my-uvim", "my_preset")
>>> UViM.from_preset("hf://me/my-uvim")

Importing this package does not import keras-hub; loading and saving do.
"""

from uvim_keras.presets.api import PresetError, install, load_stage1, load_uvim, resolve
from uvim_keras.presets.cache import DownloadError, cache_root, cached_preset, remove_preset
from uvim_keras.presets.cache import upgrade_weights_layout
from uvim_keras.presets.layout import WEIGHTS_LAYOUT
from uvim_keras.presets.registry import (
    PRESETS,
    PresetSpec,
    get_preset,
    named_presets,
    register_preset,
    unregister_preset,
)
from uvim_keras.presets.upload import upload_preset

__all__ = [
    "PRESETS", "WEIGHTS_LAYOUT", "DownloadError", "PresetError", "PresetSpec", "cache_root",
    "cached_preset", "get_preset", "install", "load_stage1", "load_uvim", "named_presets",
    "preset_status", "register_preset", "remove_preset", "resolve", "unregister_preset",
    "upgrade_weights_layout", "upload_preset",
]


def preset_status():
    """[(name, spec, cached folder or None)] for every named preset."""
    return [(name, spec, cached_preset(name)) for name, spec in PRESETS.items()]
