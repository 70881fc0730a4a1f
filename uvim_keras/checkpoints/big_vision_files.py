"""Reading and checking big_vision UViM checkpoint files (`.npz`).

What a file is (`checkpoint_kind`, from the zip directory only), clear
errors when files are swapped or belong to another task
(`check_checkpoints`), a quick shape check against the config before
anything is built (`quick_check`), and loading a file into a model built
from big_vision configs (`build_models`, `load_npz`), reporting progress per
array. The name map and the array checks are `big_vision`.

>>> stage1, lm = build_models(stage1_config, lm_config)
>>> load_npz(stage1, "panoptic_stageI_params.npz")
"""

import os
import zipfile

import numpy as np

from uvim_keras.checkpoints import big_vision as convert

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
    shapes from the zip headers, as `convert.stored_shape` does, is not
    counted)."""
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


def load_npz(model, path, report=None, stage=None):
    """Loads the big_vision `.npz` at `path` into `model` (with a flax
    optimizer's `opt/target/` prefix removed); `report(stage, done, total)`
    is told of each array read."""
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
                got = convert.stored_shape(npz, names[name])
                if tuple(got) != tuple(shape):
                    wrong.append(f"{name}: checkpoint {tuple(got)}, config {tuple(shape)}")
    if wrong:
        what = "stage-I" if stage == 1 else "stage-II (LM)"
        raise convert.ConversionError(
            f"{os.path.basename(os.fspath(path))} does not match the {what} config: "
            + "; ".join(wrong) + ". Pass the configs the checkpoint was trained with (--config)."
        )


def build_models(stage1_config, lm_config=None, task_config=None):
    """Randomly initialised (stage1 or None, lm or None) from big_vision
    configs (`stage1_config` None: the LM alone)."""
    if stage1_config is None:
        return None, convert.lm_from_big_vision_config(lm_config)
    stage1 = convert.stage1_from_big_vision_config(stage1_config, task_config=task_config)
    lm = convert.lm_from_big_vision_config(lm_config) if lm_config else None
    if lm is not None and (lm.code_len, lm.dict_size) != (stage1.code_len, stage1.dict_size):
        raise convert.ConversionError(
            f"the LM config (seq_len {lm.code_len}, vocab {lm.dict_size + 1}) does not fit the "
            f"stage-I config (code_len {stage1.code_len}, dict_size {stage1.dict_size})."
        )
    return stage1, lm


def check_checkpoints_stage2_only(stage2_path):
    kind, _, _ = checkpoint_kind(stage2_path, "stage-II")
    if kind != "stage2":
        raise BigVisionCheckpointError(
            f"{os.path.basename(os.fspath(stage2_path))} is not a UViM stage-II checkpoint."
        )
