"""Loading and saving UViM presets (keras-hub is imported only inside).

A preset handle is one of

* a named preset (`uvim_keras.presets.PRESETS`, e.g. "panoptic_coco"): on
  first use its big_vision checkpoints are downloaded into the Keras cache,
  converted and saved as a keras-hub preset folder in the cache; later uses
  load that folder without any network request;
* a bundled preset ("shapes_panoptic", "shapes_depth", "shapes_colorization",
  `uvim_keras.presets.bundled`): shipped with the package, loaded offline;
* a local preset folder (written by `save_to_preset` or `uvim-keras convert`;
  write `./name` for a folder named like a named preset);
* `hf://org/name`, `kaggle://org/model/keras/variant`, `gs://...`: handled by
  keras-hub (and huggingface_hub / kagglehub, with their own caches).

Local folders (bundled, cached, your own) are checked before keras-hub reads
them (`layout.verify_integrity`): the files their `uvim_preset.json` records
(sizes always, sha256 once per process), and the weights a complete preset
needs. For a complete preset `config.json` is the authoritative stage-I
config; `task.json` holds a copy of it, and a preset whose copy differs is
refused (`keras_hub_models.tasks.check_backbone_config`) rather than built from either.
Cached named presets are repaired, upgraded and recorded under the cache's
lock (`cache.lock`); see `cache` for the rules.
"""

import os

from uvim_keras.checkpoints.big_vision_files import build_models
from uvim_keras.presets import layout, registry
from uvim_keras.presets.bundled import bundled_preset, bundled_presets
from uvim_keras.presets.cached import cached
from uvim_keras.presets.install import install
from uvim_keras.presets.layout import IntegrityError, PresetError  # noqa: F401  (re-exported)
from uvim_keras.presets.saving import (  # noqa: F401  (re-exported)
    CARD_FIELDS,
    arch_config,
    load_stage1_folder,
    load_uvim_folder,
    save_stage1,
    save_uvim,
    update_model_card,
)
from uvim_keras.runtime.registration import registered_class


# -- handles ----------------------------------------------------------------------
def _unknown(preset):
    names = ", ".join(registry.PRESETS)
    bundled = ", ".join(bundled_presets())
    offline = f"; bundled, offline: {bundled}" if bundled else ""
    return PresetError(
        f"unknown preset {preset!r}: expected a named preset ({names}{offline}), a local "
        "preset folder, hf://org/name or kaggle://org/model/keras/variant."
    )


def is_remote(preset):
    return "://" in preset


def resolve(preset, want, load_weights=True, progress=True):
    """(handle, spec): a handle keras-hub can load, and the named preset's
    spec (None for other handles). `want` is "uvim" or "stage1". With
    `load_weights=False` a named preset that is not cached gives handle None
    (build it from its configs; nothing is downloaded)."""
    if not isinstance(preset, (str, os.PathLike)):
        raise PresetError(f"preset must be a string or path, got {type(preset).__name__}.")
    preset = os.fspath(preset)
    spec = registry.get_preset(preset)
    if spec is not None:  # names win over same-named folders (as in keras-hub): use ./name
        if want == "uvim":
            if spec.kind != "uvim":
                full = registry.complete_sibling(spec)
                hint = f" (the complete model is {full.name!r})" if full else ""
                raise PresetError(
                    f"{preset!r} is a stage-I preset: it has no stage-II LM{hint}. "
                    "Load it with UViMStage1.from_preset."
                )
            path = cached(spec.name)
            if path is None and load_weights:
                path = install(spec, progress=progress)
            return path, spec
        # A stage-I model: any cached preset with this stage-I checkpoint will do.
        for candidate in (spec, registry.stage1_sibling(spec), registry.complete_sibling(spec)):
            path = cached(candidate.name) if candidate is not None else None
            if path is not None:
                return path, spec
        if not load_weights:
            return None, spec
        target = spec if spec.kind == "stage1" else (registry.stage1_sibling(spec) or spec)
        return install(target, progress=progress), spec
    bundled = bundled_preset(preset)
    if bundled is not None:
        layout.check_weights_layout(bundled, PresetError)
        layout.verify_integrity(bundled, weights=load_weights)
        return os.fspath(bundled), None
    if os.path.isdir(preset):
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise PresetError(
                f"{preset} is a folder but not a preset (no config.json). Presets are written "
                "by save_to_preset or `uvim-keras convert`."
            )
        layout.check_weights_layout(preset, PresetError)
        layout.verify_integrity(preset, weights=load_weights)
        return preset, None
    if is_remote(preset):
        return preset, None
    if os.path.exists(preset):
        raise PresetError(
            f"{preset} is a file, not a preset folder; big_vision .npz checkpoints are "
            "converted with `uvim-keras convert --task TASK --stage1 A.npz [--stage2 B.npz] -o DIR`."
        )
    raise _unknown(preset)


def _has_task_json(handle):
    if os.path.isdir(handle):
        return os.path.isfile(os.path.join(handle, "task.json"))
    from keras_hub.src.utils.preset_utils import check_file_exists

    return check_file_exists(handle, "task.json")


# -- loading ----------------------------------------------------------------------
def load_uvim(preset, load_weights=True, dtype=None, progress=True):
    """`UViM.from_preset`."""
    handle, spec = resolve(preset, "uvim", load_weights, progress)
    if handle is None:  # named preset, no weights wanted
        stage1, lm = build_models(spec.stage1_config, spec.lm_config, spec.task_config)
        return registered_class("UViM").from_stage1(lm, stage1, spec.temperature)
    registered_class("UViMStage2Task", keras_hub=True)  # (keras-hub is needed, and here)
    if not _has_task_json(handle):
        raise PresetError(
            f"{preset} is a stage-I preset (no task.json with a stage-II LM); "
            "load it with UViMStage1.from_preset."
        )
    return load_uvim_folder(handle, load_weights=load_weights, dtype=dtype)


def load_stage1(preset, load_weights=True, dtype=None, progress=True):
    """`UViMStage1.from_preset`."""
    handle, spec = resolve(preset, "stage1", load_weights, progress)
    if handle is None:
        return build_models(spec.stage1_config, None, spec.task_config)[0]
    return load_stage1_folder(handle, load_weights=load_weights, dtype=dtype)


def preset_info(handle):
    """The `uvim_preset.json` of a local preset folder ({} if none)."""
    return layout.read_info(handle) or {}
