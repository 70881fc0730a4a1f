"""big_vision `.npz` checkpoints -> preset folders (`uvim-keras convert`).

Builds the Keras models from big_vision configs and assigns the checkpoint
arrays one at a time with a name and shape check of every parameter
(`uvim_keras.checkpoints.big_vision_files`), and writes the preset
into a temporary folder that is renamed into place when complete.

Peak memory is about one copy of the weights (the model) plus the largest
single array: arrays are read from the zip one by one, the models are saved
variable by variable, and the caller reloads the preset only after these
models are gone.
"""

import gc
import os
import shutil

from uvim_keras.checkpoints.big_vision import ConversionError
from uvim_keras.checkpoints.big_vision_files import (
    BigVisionCheckpointError,
    build_models,
    check_checkpoints,
    check_checkpoints_stage2_only,
    load_npz,
    quick_check,
)
from uvim_keras.presets import cache, saving
from uvim_keras.runtime.registration import registered_class


def convert_to_preset(out_dir, task, stage1_path, stage1_config, stage2_path=None,
                      lm_config=None, task_config=None, temperature=None, info=None,
                      stage1_preset=None, overwrite=False, progress=None):
    """Converts big_vision checkpoints into a preset folder `out_dir`.

    `stage1_path` / `stage2_path`: the `.npz` files (stage 2 optional: without
    it the preset is a stage-I preset). `stage1_config` / `lm_config`:
    big_vision model kwargs. `stage1_preset`: instead of `stage1_path`, a
    converted preset folder to take the stage-I model from. `info`: model
    card fields (description, metrics, ...). The folder appears only when
    complete (written into `.tmp-<name>~*` next to it, fsynced, renamed).
    An existing non-empty `out_dir` is an error unless `overwrite`: True
    replaces it, "keep" keeps a complete preset found there when done
    (another process converted the same files meanwhile). Only a folder of
    the named-preset cache or a uvim-keras preset folder (its
    `uvim_preset.json`, nothing but preset files in it) is ever replaced;
    anything else (a file, a symlink, another folder) is a `PresetError`
    naming it (`cache.check_replaceable`). A folder of the cache is written
    under its lock. `progress`: None or a callable progress(stage, done,
    total) told of each stage (a line of text; done and total None) and of
    each checkpoint array assigned (done of total arrays).
    Returns `out_dir`.
    """

    def report(stage, done=None, total=None):
        if progress is not None:
            progress(stage, done, total)

    arrays = report if progress is not None else None
    if stage1_path is not None:
        check_checkpoints(task, stage1_path, stage2_path)
    elif stage2_path is not None:
        check_checkpoints_stage2_only(stage2_path)
    if lm_config is not None and stage2_path is None:
        lm_config = None
    out_dir = os.path.abspath(os.fspath(out_dir))
    with cache.lock_if_cached(out_dir, "converting") as locked:
        if locked:  # leftovers of killed runs for this cache folder are ours to remove
            cache.repair(out_dir, inputs=False)  # (an installer's links stay)
        return _convert_into(out_dir, task, stage1_path, stage1_config, stage2_path, lm_config,
                             task_config, temperature, info, stage1_preset, overwrite, report,
                             arrays)


def _check_out_dir(out_dir, overwrite):
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        cache.check_replaceable(out_dir)  # (raises: a symlink or a file is never replaced)
    if not os.listdir(out_dir):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite).")
    cache.check_replaceable(out_dir)


def _convert_into(out_dir, task, stage1_path, stage1_config, stage2_path, lm_config, task_config,
                  temperature, info, stage1_preset, overwrite, report, arrays):
    _check_out_dir(out_dir, overwrite)
    tmp = cache.new_tmp_dir(out_dir)
    try:
        if stage1_path is not None:
            quick_check(stage1_path, stage1_config, 1)
        if lm_config is not None:
            quick_check(stage2_path, lm_config, 2)
        if stage1_preset is not None:
            report(f"loading the stage-I model from {stage1_preset}")
            stage1 = saving.load_stage1_folder(stage1_preset)
        else:
            report("building the stage-I model")
            stage1 = build_models(stage1_config, None, task_config)[0]
            load_npz(stage1, stage1_path, arrays,
                  f"stage-I weights ({os.path.basename(os.fspath(stage1_path))})")
        if stage1.task.name != task:
            raise BigVisionCheckpointError(
                f"the stage-I config is for the {stage1.task.name} task, not {task}."
            )
        lm = None
        if lm_config is not None:
            report("building the stage-II LM")
            lm = build_models(None, lm_config)[1]
            if (lm.code_len, lm.dict_size) != (stage1.code_len, stage1.dict_size):
                raise ConversionError(
                    f"the LM config (seq_len {lm.code_len}, vocab {lm.dict_size + 1}) does not fit "
                    f"the stage-I model (code_len {stage1.code_len}, dict_size {stage1.dict_size})."
                )
            load_npz(lm, stage2_path, arrays,
                  f"stage-II LM weights ({os.path.basename(os.fspath(stage2_path))})")
        info = dict(info or {})
        info.setdefault("task", task)
        sources = [os.path.basename(os.fspath(p)) for p in (stage1_path, stage2_path) if p]
        info.setdefault("converted_from", sources)
        info.setdefault("big_vision_config", {
            "stage1": stage1_config, **({"lm": lm_config} if lm_config else {}),
            **({"task": task_config} if task_config else {}),
        })
        report(f"saving the preset ({out_dir})")
        if lm is not None:
            uvim = registered_class("UViM").from_stage1(lm, stage1, temperature)
            saving.save_uvim(uvim, tmp, info=info)
            del uvim
        else:
            saving.save_stage1(stage1, tmp, info=info)
        del stage1, lm
        gc.collect()
        if overwrite == "keep":
            cache.publish_dir(tmp, out_dir)  # keeps a complete preset that appeared meanwhile
        else:
            _check_out_dir(out_dir, overwrite)  # (again: it may have changed meanwhile)
            if os.path.isdir(out_dir) and not os.listdir(out_dir):
                os.rmdir(out_dir)
            cache.replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


