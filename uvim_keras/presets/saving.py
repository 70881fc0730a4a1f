"""Saving UViM and stage-I models as presets (keras-hub's layout plus
`uvim_preset.json` and a model card).

The keras-hub classes (`uvim_keras.keras_hub_models`) are found through
Keras' registry (`runtime.registration`), so this module imports no model.

>>> from uvim_keras.presets.saving import save_uvim
>>> save_uvim(uvim, "my_preset", description="...", metrics={"PQ": 55.4})
"""

import json
import os

from uvim_keras.presets import layout
from uvim_keras.presets.layout import PresetError
from uvim_keras.presets.model_card import write_model_card
from uvim_keras.runtime.registration import registered_class

_KERAS_MODEL_KEYS = ("name", "trainable", "dtype")


def arch_config(model):
    """A model's config without Keras' per-instance keys (name, trainable,
    dtype): what its architecture is."""
    return {k: v for k, v in model.get_config().items() if k not in _KERAS_MODEL_KEYS}


def _hub(name):
    return registered_class(name, keras_hub=True)


def load_stage1_folder(path, load_weights=True, dtype=None):
    """The stage-I model of a preset folder or keras-hub handle (no checks:
    the loader's `api.load_stage1` checks folders first)."""
    backbone = _hub("UViMStage1Backbone").from_preset(os.fspath(path), load_weights=load_weights,
                                                      dtype=dtype)
    return backbone.stage1


def load_uvim_folder(path, load_weights=True, dtype=None):
    """The UViM of a complete preset folder or keras-hub handle (no checks:
    the loader's `api.load_uvim` checks folders first)."""
    task = _hub("UViMStage2Task").from_preset(os.fspath(path), load_weights=load_weights,
                                              dtype=dtype)
    return task.to_uvim()


#: The model card fields `save_to_preset` and `update_model_card` take.
CARD_FIELDS = ("description", "metrics", "dataset", "name", "metrics_note", "license",
               "dataset_ids", "base_model")


def _with_card(info, card):
    unknown = set(card) - set(CARD_FIELDS)
    if unknown:
        raise TypeError(f"unexpected model card fields: {sorted(unknown)}.")
    info = dict(info or {})
    info.update({k: v for k, v in card.items() if v is not None})
    return info


def _card_info(model, kind, info, card):
    info = _with_card(info, card)
    info.setdefault("task", model.task.name)
    info["kind"] = kind
    info[layout.LAYOUT_KEY] = layout.WEIGHTS_LAYOUT
    info.setdefault("metrics", {})
    if kind == "uvim":
        info["temperature"] = model.default_temperature
    return info


def _finish(preset_dir, info, model_config):
    info.setdefault("name", os.path.basename(os.path.normpath(os.fspath(preset_dir))))
    info.pop(layout.FILES_KEY, None)
    write_model_card(preset_dir, info, model_config)
    # The marker, last: with the integrity record of the files just written.
    layout.write_info(preset_dir, info)
    return preset_dir


def _without_optimizer(model):
    """`model`, or an uncompiled copy of it when it holds optimizer state:
    presets carry weights only (Keras would also write the optimizer's)."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_stage1(stage1, preset_dir, max_shard_size=10, info=None, **card):
    """`UViMStage1.save_to_preset`."""
    info = _card_info(stage1, "stage1", info, card)
    _hub("UViMStage1Backbone").from_stage1(_without_optimizer(stage1)).save_to_preset(
        os.fspath(preset_dir), max_shard_size=max_shard_size
    )
    _name_tasks(preset_dir, [])  # a stage-I preset loads as no keras-hub task
    return _finish(preset_dir, info, {"stage1": arch_config(stage1)})


def save_uvim(uvim, preset_dir, max_shard_size=10, info=None, **card):
    """`UViM.save_to_preset`."""
    if uvim.stage1 is None:
        raise PresetError(
            "this UViM was built from a base model and quantizer only; a preset holds the whole "
            "stage-I model (oracle included). Build it with UViM.from_stage1(lm, stage1)."
        )
    info = _card_info(uvim, "uvim", info, card)
    plain = type(uvim).from_stage1(_without_optimizer(uvim.lm), _without_optimizer(uvim.stage1),
                                   temperature=uvim.temperature)
    task = _hub(uvim.task.keras_hub_task).from_uvim(plain)
    task.save_to_preset(os.fspath(preset_dir), max_shard_size=max_shard_size)
    _name_tasks(preset_dir, [] if type(task) is _hub("UViMStage2Task")
                else [type(task).__base__.__name__])
    config = {"stage1": arch_config(uvim.stage1), "lm": arch_config(uvim.lm)}
    return _finish(preset_dir, info, config)


def _name_tasks(preset_dir, tasks):
    """keras-hub's `metadata.json` lists every task class whose backbone is
    the preset's; a UViM preset is one of them (e.g. ["ImageSegmenter"]: the
    Hugging Face snippet `keras_hub.models.ImageSegmenter.from_preset`)."""
    path = os.path.join(os.fspath(preset_dir), "metadata.json")
    with open(path, encoding="utf-8") as f:
        metadata = json.load(f)
    metadata["tasks"] = list(tasks)
    layout.write_json_atomic(path, metadata, indent=4)


def update_model_card(preset_dir, **card):
    """Updates model-card fields (`metrics`, `description`, `dataset`, ...)
    of a local preset folder saved by `save_to_preset`: its `uvim_preset.json`
    and `README.md` are rewritten, its configs and weights are not touched
    (their integrity record is checked first and kept).

    Example:
    >>> update_model_card("weights/shapes_panoptic", metrics={"PQ": 55.366})
    """
    info = layout.read_info(preset_dir)
    if not info or info.get("kind") not in ("uvim", "stage1"):
        raise PresetError(f"preset_dir={os.fspath(preset_dir)!r} is not a saved UViM or stage-I "
                          "preset folder (no uvim_preset.json of either kind).")
    layout.verify_integrity(preset_dir, info=info)
    if info["kind"] == "uvim":
        uvim = load_uvim_folder(preset_dir, load_weights=False)
        config = {"stage1": arch_config(uvim.stage1), "lm": arch_config(uvim.lm)}
    else:
        config = {"stage1": arch_config(load_stage1_folder(preset_dir, load_weights=False))}
    return _finish(preset_dir, _with_card(info, card), config)
