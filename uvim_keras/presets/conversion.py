"""big_vision `.npz` checkpoints -> keras-hub preset folders.

Builds the Keras models from big_vision configs (`uvim_keras.convert`),
assigns the checkpoint arrays one at a time with a name and shape check of
every parameter (`convert.load_big_vision_weights`), and writes the preset
into a temporary folder that is renamed into place when complete.

Peak memory is about one copy of the weights (the model) plus the largest
single array: arrays are read from the zip one by one, the models are saved
variable by variable, and the caller reloads the preset only after these
models are gone.
"""

import gc
import os
import shutil
import zipfile

from uvim_keras import convert
from uvim_keras.presets import cache

TASK_KEYS = {
    "panoptic": ("semantics", "instances"),
    "depth": ("depth",),
    "colorization": ("color",),
}


class BigVisionCheckpointError(convert.ConversionError):
    """A file is not the big_vision checkpoint it is supposed to be."""


def _member_names(path, role):
    if not os.path.isfile(path):
        raise BigVisionCheckpointError(f"{role} checkpoint {os.fspath(path)!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise BigVisionCheckpointError(
            f"{role} checkpoint {os.fspath(path)!r} is not a readable .npz file ({e})."
        ) from e
    return [n[:-4] if n.endswith(".npy") else n for n in names]


def checkpoint_kind(path, role="the"):
    """("stage1", task or None) or ("stage2", None) from a big_vision .npz's
    parameter names (read from the zip directory only)."""
    names = _member_names(path, role)
    if any(n.endswith("state/dictionary") for n in names):
        stems = sorted({
            n.split("/")[1][len("embedding_"):] for n in names
            if n.startswith("params/embedding_") and n.count("/") >= 2
        })
        task = next((t for t, keys in TASK_KEYS.items() if sorted(keys) == stems), None)
        return "stage1", task, stems
    if any("EmbedPatches" in n or "EncDecBlock" in n for n in names):
        return "stage2", None, []
    return None, None, []


def check_checkpoints(task, stage1_path, stage2_path=None):
    """Clear errors when the files are not a `task` stage-I (and stage-II)
    checkpoint, before anything is built."""
    kind, found, stems = checkpoint_kind(stage1_path, "stage-I")
    name = os.path.basename(os.fspath(stage1_path))
    if kind == "stage2":
        raise BigVisionCheckpointError(
            f"{name} is a stage-II (LM) checkpoint, not a stage-I one; "
            "did you swap --stage1 and --stage2?"
        )
    if kind is None:
        raise BigVisionCheckpointError(f"{name} is not a UViM stage-I checkpoint (no state/dictionary).")
    if found != task:
        what = f"a {found} stage-I checkpoint" if found else "a stage-I checkpoint"
        raise BigVisionCheckpointError(
            f"{name} is {what} (it has params/embedding_{{{','.join(stems)}}}); the {task} "
            f"task expects params/embedding_{{{','.join(sorted(TASK_KEYS[task]))}}}."
        )
    if stage2_path is not None:
        kind2, _, _ = checkpoint_kind(stage2_path, "stage-II")
        name2 = os.path.basename(os.fspath(stage2_path))
        if kind2 == "stage1":
            raise BigVisionCheckpointError(
                f"{name2} is a stage-I checkpoint, not a stage-II (LM) one; "
                "did you swap --stage1 and --stage2?"
            )
        if kind2 is None:
            raise BigVisionCheckpointError(
                f"{name2} is not a UViM stage-II checkpoint (no EmbedPatches / EncDecBlock)."
            )


class _StrippedNames:
    """A read-only view of an .npz with a name prefix removed (for files
    saved with a flax optimizer, `opt/target/...`)."""

    def __init__(self, npz, prefix):
        self._npz = npz
        self._map = {k[len(prefix):]: k for k in npz.keys() if k.startswith(prefix)}

    def keys(self):
        return self._map.keys()

    def __getitem__(self, key):
        return self._npz[self._map[key]]


def _open_npz(path, report=None, stage=None):
    """`np.load(path)`, or with `report`, an NpzFile that calls
    report(stage, done, total) as each array is first read (reading the
    shapes from the zip headers, as `convert._stored_shape` does, is not
    counted)."""
    import numpy as np

    if report is None:
        return np.load(path, allow_pickle=False)

    class _ReportingNpz(np.lib.npyio.NpzFile):
        def __getitem__(self, key):
            value = super().__getitem__(key)
            if key not in self._read:
                self._read.add(key)
                report(stage, len(self._read), len(self.files))
            return value

    fid = open(path, "rb")
    try:
        npz = _ReportingNpz(fid, own_fid=True, allow_pickle=False)
    except BaseException:
        fid.close()
        raise
    npz._read = set()
    report(stage, 0, len(npz.files))
    return npz


def _load(model, path, report=None, stage=None):
    with _open_npz(path, report, stage) as npz:
        keys = list(npz.keys())
        if keys and all(k.startswith("opt/target/") for k in keys):
            convert.load_big_vision_weights(model, _StrippedNames(npz, "opt/target/"))
        else:
            convert.load_big_vision_weights(model, npz)
    return model


def _expected_stage1_shapes(c):
    width = c.get("width", 768)
    dim = c.get("codeword_dim") or width
    dict_size = c.get("dict_size", 512)
    out = {"state/dictionary": (dict_size, dim), "state/counts": (dict_size,),
           "params/encoder_head/kernel": (width, dim), "params/decoder_stem/kernel": (dim, width)}
    for key, shape in c.get("inputs", {}).items():
        out[f"params/embedding_{key}/kernel"] = (shape[0], shape[1], width)
    patch = tuple(c.get("patch_size", (8, 8)))
    size = tuple(c.get("input_size", (256, 256)))
    if c.get("posemb", "learn") == "learn" and size[0] % patch[0] == 0 and size[1] % patch[1] == 0:
        grid = (size[0] // patch[0]) * (size[1] // patch[1])
        out["params/pos_embedding_encoder"] = (1, grid, width)
    return out


def _expected_lm_shapes(c):
    width = c.get("emb_dim", 512)
    patches = c.get("patches", {})
    patch = tuple(patches.get("size", (16, 16)) if isinstance(patches, dict) else patches)
    out = {"params/EmbedPatches/kernel": (patch[0], patch[1], 3, width),
           "params/decoder/EmbedTargets/embedding": (c.get("vocab_size", 32000), width)}
    if c.get("posemb_type", "sincos2d") == "learn":
        out["params/pos_embedding_decoder"] = (1, c.get("seq_len", 256), width)
    return out


def quick_check(path, config, stage):
    """Compares a few telling arrays of the checkpoint (read from the zip
    headers only) with the config, so that a config that does not fit fails
    in a second instead of after building the models."""
    import numpy as np

    expected = _expected_stage1_shapes(config) if stage == 1 else _expected_lm_shapes(config)
    wrong = []
    with np.load(path, allow_pickle=False) as npz:
        names = {}
        for k in npz.keys():
            name = k[len("opt/target/"):] if k.startswith("opt/target/") else k
            if stage == 2 and not name.startswith("params/"):
                name = "params/" + name
            names[name] = k
        for name, shape in expected.items():
            if name in names:
                got = convert._stored_shape(npz, names[name])
                if tuple(got) != tuple(shape):
                    wrong.append(f"{name}: checkpoint {tuple(got)}, config {tuple(shape)}")
    if wrong:
        what = "stage-I" if stage == 1 else "stage-II (LM)"
        raise convert.ConversionError(
            f"{os.path.basename(os.fspath(path))} does not match the {what} config: "
            + "; ".join(wrong) + ". Pass the configs the checkpoint was trained with (--config)."
        )


def task_name(task):
    from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask

    for name, cls in (("panoptic", PanopticTask), ("depth", DepthTask),
                      ("colorization", ColorizationTask)):
        if isinstance(task, cls):
            return name
    return getattr(task, "name", type(task).__name__)


def build_models(stage1_config, lm_config=None, task_config=None):
    """Randomly initialised (stage1, lm or None) from big_vision configs."""
    stage1 = convert.stage1_from_big_vision_config(stage1_config, task_config=task_config)
    lm = convert.lm_from_big_vision_config(lm_config) if lm_config else None
    if lm is not None and (lm.code_len, lm.dict_size) != (stage1.code_len, stage1.dict_size):
        raise convert.ConversionError(
            f"the LM config (seq_len {lm.code_len}, vocab {lm.dict_size + 1}) does not fit the "
            f"stage-I config (code_len {stage1.code_len}, dict_size {stage1.dict_size})."
        )
    return stage1, lm


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
    from uvim_keras.presets import api

    _check_out_dir(out_dir, overwrite)
    tmp = cache.new_tmp_dir(out_dir)
    try:
        if stage1_path is not None:
            quick_check(stage1_path, stage1_config, 1)
        if lm_config is not None:
            quick_check(stage2_path, lm_config, 2)
        if stage1_preset is not None:
            report(f"loading the stage-I model from {stage1_preset}")
            stage1 = api.load_stage1(stage1_preset)
        else:
            report("building the stage-I model")
            stage1 = build_models(stage1_config, None, task_config)[0]
            _load(stage1, stage1_path, arrays,
                  f"stage-I weights ({os.path.basename(os.fspath(stage1_path))})")
        if task_name(stage1.task) != task:
            raise BigVisionCheckpointError(
                f"the stage-I config is for the {task_name(stage1.task)} task, not {task}."
            )
        lm = None
        if lm_config is not None:
            report("building the stage-II LM")
            lm = convert.lm_from_big_vision_config(lm_config)
            if (lm.code_len, lm.dict_size) != (stage1.code_len, stage1.dict_size):
                raise convert.ConversionError(
                    f"the LM config (seq_len {lm.code_len}, vocab {lm.dict_size + 1}) does not fit "
                    f"the stage-I model (code_len {stage1.code_len}, dict_size {stage1.dict_size})."
                )
            _load(lm, stage2_path, arrays,
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
            from uvim_keras.models.uvim import UViM

            uvim = UViM.from_stage1(lm, stage1, temperature)
            api.save_uvim(uvim, tmp, info=info)
            del uvim
        else:
            api.save_stage1(stage1, tmp, info=info)
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


def check_checkpoints_stage2_only(stage2_path):
    kind, _, _ = checkpoint_kind(stage2_path, "stage-II")
    if kind != "stage2":
        raise BigVisionCheckpointError(
            f"{os.path.basename(os.fspath(stage2_path))} is not a UViM stage-II checkpoint."
        )
