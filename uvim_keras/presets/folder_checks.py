"""Checks of a local preset folder before it is loaded, each failure a
`PresetFolderError` on one line naming the folder and the file.

keras-hub's own errors for a damaged preset name no file ("Expecting value:
line 1 column 1", "Unable to synchronously open file (truncated file ...)"),
name the wrong one (a missing `model.weights.h5` is reported as
"`model.weights.json` doesn't exist") or do not come at all (a complete
preset without `task.weights.h5` loads with an untrained LM).
`check_preset_folder` looks at every file that loading reads:

* `config.json` (the stage-I backbone) and, for a complete UViM, `task.json`
  (the keras-hub task with the stage-II LM): present, valid JSON objects
  describing a `UViMStage1Backbone` / a UViM task, every class they name
  known and from keras, keras_hub or uvim_keras (a config naming
  `module: "os"` is refused before Keras sees it);
* `model.weights.h5` (or a sharded `model.weights.json` and its files) and,
  for a complete UViM, `task.weights.h5`: present, HDF5 files of their full
  size, holding weights;
* `uvim_preset.json` when present: a JSON object whose `weights_layout` is
  an integer.

It does not read the arrays (values are checked by the loader).

>>> from uvim_keras.presets.folder_checks import check_preset_folder
>>> check_preset_folder("my_preset")          # raises PresetFolderError, or returns the folder
"""

import json
import os
import re

from uvim_keras.presets import cache, registry
from uvim_keras.presets.bundled import bundled_preset
from uvim_keras.presets.layout import PresetError
from uvim_keras.runtime.registration import registered_class

CONFIG_FILE = "config.json"
TASK_FILE = "task.json"
MODEL_WEIGHTS = "model.weights.h5"
SHARDED_INDEX = "model.weights.json"
TASK_WEIGHTS = "task.weights.h5"
INFO_FILE = "uvim_preset.json"

#: Packages whose classes a preset config may name (as keras-hub presets do).
TRUSTED_MODULES = ("keras", "keras_hub", "uvim_keras")


class PresetFolderError(PresetError):
    """A local preset folder with a missing or damaged file (the message
    names the folder and the file)."""


def local_preset_folder(preset):
    """The local folder `UViM.from_preset(preset)` would read, if there is
    one already: a bundled preset, a converted named preset in the cache or
    a folder path; None for a named preset not converted yet, hf://,
    kaggle:// handles and unknown names (the loader reports those)."""
    if not isinstance(preset, (str, os.PathLike)):
        return None
    preset = os.fspath(preset)
    spec = registry.get_preset(preset)
    if spec is not None:
        try:
            return cache.cached_preset(spec.name) if spec.kind == "uvim" else None
        except Exception:  # noqa: BLE001 (the loader reports a broken cache itself)
            return None
    bundled = bundled_preset(preset)
    if bundled is not None:
        return os.fspath(bundled)
    if "://" not in preset and os.path.isdir(preset):
        return preset
    return None


def check_preset_folder(folder, kind="uvim"):
    """Raises `PresetFolderError` when the preset folder `folder` lacks a
    file that loading a preset of `kind` ("uvim": a complete UViM, or
    "stage1") reads, or has one that is not what loading expects; returns
    `folder` otherwise."""
    if kind not in ("uvim", "stage1"):
        raise ValueError(f"kind={kind!r}; expected 'uvim' or 'stage1'.")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise PresetFolderError(f"preset folder {folder} does not exist or is not a folder.")
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise PresetFolderError(
            f"{folder} is a folder but not a preset (no {CONFIG_FILE}). Presets are written by "
            "save_to_preset or `uvim-keras convert`."
        )
    if kind == "uvim" and not os.path.exists(os.path.join(folder, TASK_FILE)):
        raise PresetFolderError(
            f"preset folder {folder} has no {TASK_FILE}: it is a stage-I preset (no stage-II LM); "
            "load it with UViMStage1.from_preset."
        )
    info_path = os.path.join(folder, INFO_FILE)
    if os.path.lexists(info_path):
        info = read_json(folder, INFO_FILE)
        layout = info.get("weights_layout", 1)
        if not isinstance(layout, int) or isinstance(layout, bool):
            raise PresetFolderError(
                f"preset folder {folder}: {INFO_FILE} has weights_layout {layout!r}; expected an "
                "integer.")
    _check_weights(folder, kind)
    backbone = registered_class("UViMStage1Backbone", keras_hub=True)
    _check_serialized(folder, CONFIG_FILE, read_json(folder, CONFIG_FILE),
                      backbone, "a UViM stage-I backbone (UViMStage1Backbone)")
    if kind == "uvim":
        base = registered_class("UViMStage2Task", keras_hub=True)
        names = ", ".join(c.__name__ for c in base.__subclasses__())
        _check_serialized(folder, TASK_FILE, read_json(folder, TASK_FILE), base,
                          f"a UViM task ({names})")
    return folder


# -- files ------------------------------------------------------------------------
def read_json(folder, name):
    """The JSON object in file `name` of `folder` (PresetFolderError when it
    is missing, unreadable, not JSON or not an object)."""
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise PresetFolderError(f"preset folder {folder} has no {name}.") from None
    except IsADirectoryError:
        raise PresetFolderError(f"preset folder {folder}: {name} is a folder, not a file.") from None
    except OSError as e:
        raise PresetFolderError(
            f"preset folder {folder}: cannot read {name} ({e.strerror or e}).") from None
    except UnicodeDecodeError:
        raise PresetFolderError(
            f"preset folder {folder}: {name} is not valid JSON (not UTF-8 text).") from None
    except ValueError as e:
        raise PresetFolderError(f"preset folder {folder}: {name} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise PresetFolderError(
            f"preset folder {folder}: {name} holds a JSON {type(data).__name__}, not an object.")
    return data


def _check_weights(folder, kind):
    files = [TASK_WEIGHTS] if kind == "uvim" else []
    if os.path.lexists(os.path.join(folder, MODEL_WEIGHTS)) or not os.path.lexists(
            os.path.join(folder, SHARDED_INDEX)):
        files.insert(0, MODEL_WEIGHTS)
    else:  # keras-hub's sharded weights: an index naming its .h5 files
        index = read_json(folder, SHARDED_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise PresetFolderError(
                f"preset folder {folder}: {SHARDED_INDEX} has no weight_map of the sharded "
                f"{MODEL_WEIGHTS}.")
        shards = set()
        for value in weight_map.values():
            shards.update(value if isinstance(value, list) else [value])
        if not all(isinstance(s, str) and s and os.path.basename(s) == s for s in shards):
            raise PresetFolderError(
                f"preset folder {folder}: {SHARDED_INDEX} names files outside the folder.")
        files[:0] = sorted(shards)
    for name in files:
        _check_h5(folder, name, kind)


def _missing_weights(folder, name, kind):
    if name == TASK_WEIGHTS:
        what = "the stage-II LM's weights; without them the LM would be untrained"
    elif name == MODEL_WEIGHTS:
        what = "the stage-I model's weights"
    else:
        what = f"a shard of the stage-I model's weights listed in {SHARDED_INDEX}"
    return PresetFolderError(f"preset folder {folder} has no {name} ({what}).")


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def _check_h5(folder, name, kind):
    import h5py

    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise _missing_weights(folder, name, kind)
    if os.path.isdir(path):
        raise PresetFolderError(f"preset folder {folder}: {name} is a folder, not a weights file.")
    if os.path.getsize(path) == 0:
        raise PresetFolderError(f"preset folder {folder}: {name} is empty (0 bytes).")
    try:
        with h5py.File(path, "r") as f:
            has_weights = _has_dataset(f)
    except OSError as e:
        message = " ".join(str(e).split())
        truncated = _TRUNCATED.search(message)
        if truncated:
            reason = (f"truncated: {int(truncated.group(1))} of {int(truncated.group(2))} "
                      "bytes")
        elif "file signature not found" in message:
            reason = "not an HDF5 file"
        else:
            reason = e.strerror or message
        raise PresetFolderError(
            f"preset folder {folder}: {name} is not a readable weights file ({reason}).") from None
    if not has_weights:
        raise PresetFolderError(f"preset folder {folder}: {name} holds no weights.")


def _has_dataset(group):
    import h5py

    found = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset):
            found.append(True)
            return True  # stops the walk
        return None

    group.visititems(visit)
    return bool(found)


# -- classes ------------------------------------------------------------------------
def _trusted(module):
    return isinstance(module, str) and module.split(".")[0] in TRUSTED_MODULES


def _registered(obj):
    """The class registered with Keras under the object's `registered_name`."""
    import keras

    registered = obj.get("registered_name")
    if isinstance(registered, str) and registered:
        return keras.saving.get_registered_object(registered)
    return None


def _resolve_class(obj):
    """The class a serialized Keras object names, or None if unknown: one
    registered with Keras under its `registered_name`, or `class_name` of
    `module` when that is a module of `TRUSTED_MODULES` (no other module is
    imported)."""
    import importlib

    found = _registered(obj)
    if found is not None:
        return found
    module, name = obj.get("module"), obj.get("class_name")
    if not (_trusted(module) and isinstance(name, str) and name):
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _where(path):
    return "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _serialized_objects(value, path=()):
    """(path, dict) of every serialized Keras object (a dict with `module`,
    `class_name` and `config`) in a JSON value."""
    if isinstance(value, dict):
        if {"class_name", "config"} <= set(value) and ("module" in value or not path):
            yield path, value
        for key, item in value.items():
            yield from _serialized_objects(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _serialized_objects(item, path + (i,))


def _check_serialized(folder, name, data, base, expected):
    where = f"preset folder {folder}: {name}"
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("class_name"), str):
        raise PresetFolderError(
            f"{where} is not a saved Keras object (expected 'class_name', 'module' and a "
            "'config' object).")
    for path, obj in _serialized_objects(data):
        module, class_name = obj.get("module"), obj.get("class_name")
        at = f" (at {_where(path)})" if path else ""
        cls = _resolve_class(obj)
        if not path:  # keras-hub finds the top object by its registered name only
            if cls is not None and not (isinstance(cls, type) and issubclass(cls, base)):
                shown = (f"{getattr(cls, '__module__', module)}."
                         f"{getattr(cls, '__name__', class_name)}")
                raise PresetFolderError(f"{where} describes {shown}, not {expected}.")
            cls = _registered(obj)
        if not _trusted(module) and cls is None:
            raise PresetFolderError(
                f"{where} names class {class_name!r} of module {module!r}{at}; a preset may only "
                f"name classes of {', '.join(TRUSTED_MODULES)} or classes registered with "
                "keras.saving.register_keras_serializable.")
        if cls is None:
            raise PresetFolderError(
                f"{where} names an unknown class {class_name!r} (module {module!r}, registered "
                f"name {obj.get('registered_name')!r}){at}.")
        if not path and not (isinstance(cls, type) and issubclass(cls, base)):
            shown = f"{getattr(cls, '__module__', module)}.{getattr(cls, '__name__', class_name)}"
            raise PresetFolderError(f"{where} describes {shown}, not {expected}.")
