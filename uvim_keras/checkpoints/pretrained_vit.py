"""Initialise UViM's stage-II image encoder from a pretrained ViT checkpoint.

UViM trains the guiding-code LM with its encoder initialised from an
ImageNet-21k ViT (the paper: the AugReg ViT-L/16). big_vision does this in
`proj.uvim.vtt.load` -> `vit.load`: the encoder's patch embedding, position
embedding and transformer blocks are taken from the ViT checkpoint, the class
token and the classification head are dropped, and the position embedding is
resampled to the LM's patch grid. `init_lm_encoder_from_vit` does the same
for a `GuidingCodeLM`; the decoder is left untouched.

Accepted checkpoints (`.npz` files or name -> array mappings, '/'-joined
names, optionally under `params/`):

* big_vision ViTs: `embedding/{kernel,bias}`, `pos_embedding`, `cls`,
  `Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm/...`,
  `head/...` (or a stacked `Transformer/encoderblock/...` of `scan=True`
  models, unstacked here as big_vision's `scan_to_pyloop` does);
* AugReg / original ViT files of `google-research/vision_transformer`: the
  position embedding under `Transformer/posembed_input/pos_embedding`,
  pre-Linen module numbering (`LayerNorm_0/LayerNorm_2`,
  `MultiHeadDotProductAttention_1`, `MlpBlock_3`, renumbered per module type
  as flax's `convert_pre_linen` does) and, for the i21k models, `pre_logits`.

The position embedding: a leading class-token entry is recognised as big_vision
does (N = k*k + 1 tokens) and dropped; the remaining k x k grid is resampled to
the LM's (gh, gw) grid with `scipy.ndimage.zoom(order=1)` -- the linear,
corner-aligned interpolation of big_vision's `vit.resample_posemb` (which only
handles square target grids; a non-square LM grid uses one zoom factor per
axis). Equal grids are copied unchanged.

Example:
>>> lm = GuidingCodeLM(input_size=512, patch_size=16, code_len=256, dict_size=4096,
...                    width=1024, num_layers=24, num_heads=16, mlp_dim=4096)
>>> init_lm_encoder_from_vit(lm, "augreg_i21k_L16.npz")  # 14x14 -> 32x32 posemb
"""

import logging
import os
import re
import warnings

import numpy as np

from uvim_keras.checkpoints.big_vision import ConversionError, dense_map, stored_shape, vit_encoder_map
from uvim_keras.runtime.registration import registered_class

__all__ = [
    "DEFAULT_DONT_LOAD",
    "init_lm_encoder_from_base_model",
    "init_lm_encoder_from_vit",
    "resample_posemb",
    "vit_encoder_variable_map",
]

logger = logging.getLogger(__name__)

# Parts of a ViT classifier that the LM's encoder has no use for (regexes, fullmatch).
DEFAULT_DONT_LOAD = ("cls", "head/.*", "pre_logits/.*", "MAPHead_0/.*")

_POSEMB = "pos_embedding"
_OLD_POSEMB = ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding")
_MODULE_NUM = re.compile(r"(.*)_(\d+)")


def vit_encoder_variable_map(lm):
    """{ViT checkpoint name: variable} for the LM's patch embedding and encoder
    (the position embedding is handled separately: it is resampled)."""
    return {
        **dense_map("embedding", lm.image_embedding.conv),
        **vit_encoder_map("Transformer", lm.encoder),
    }


def resample_posemb(posemb, grid_size):
    """Resamples a (1, k*k, D) ViT position embedding to (1, gh*gw, D).

    Linear interpolation with corners aligned (`scipy.ndimage.zoom`, order 1),
    as big_vision's `vit.resample_posemb`; returned unchanged when the grids
    already agree.
    """
    import scipy.ndimage

    posemb = np.asarray(posemb)
    gh, gw = (int(g) for g in grid_size)
    n, width = posemb.shape[1], posemb.shape[2]
    k = int(np.sqrt(n))
    if k * k != n:
        raise ConversionError(
            f"{_POSEMB}: {n} tokens is not a square grid; cannot resample to {gh}x{gw}."
        )
    if (k, k) == (gh, gw):
        return posemb
    logger.info("resampling the ViT position embedding from %dx%d to %dx%d", k, k, gh, gw)
    grid = posemb.reshape(k, k, width)
    grid = scipy.ndimage.zoom(grid, (gh / k, gw / k, 1), order=1)
    if grid.shape != (gh, gw, width):  # zoom rounds the output size
        raise ConversionError(
            f"{_POSEMB}: resampling gave {grid.shape}, expected {(gh, gw, width)}."
        )
    return grid.reshape(1, gh * gw, width)


# -- reading the checkpoint -------------------------------------------------------
def _open(checkpoint):
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.exists(checkpoint):
            raise ConversionError(f"checkpoint {os.fspath(checkpoint)!r} does not exist.")
        try:
            return np.load(checkpoint, allow_pickle=False)
        except Exception as e:  # zip errors, truncated files, ...
            raise ConversionError(
                f"checkpoint {os.fspath(checkpoint)!r} is not a readable .npz file ({e})."
            ) from e
    if not hasattr(checkpoint, "keys"):
        raise TypeError(
            "checkpoint must be a path or a name -> array mapping; got "
            f"{type(checkpoint).__name__}."
        )
    return checkpoint


def _linen_names(names):
    """{stored name: Linen name}: per scope, `Module_<n>` children are renumbered
    0, 1, ... per module type in numeric order (pre-Linen files numbered all
    submodules of a scope together). Linen names map to themselves."""
    children = {}
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts[:-1]):
            children.setdefault(tuple(parts[:i]), set()).add(part)
    renames = {}
    for scope, kids in children.items():
        groups = {}
        for kid in kids:
            m = _MODULE_NUM.fullmatch(kid)
            if m:
                groups.setdefault(m.group(1), []).append((int(m.group(2)), kid))
        for module, numbered in groups.items():
            for new, (_, kid) in enumerate(sorted(numbered)):
                renames[(scope, kid)] = f"{module}_{new}"
    out = {}
    for name in names:
        parts = name.split("/")
        new = [renames.get((tuple(parts[:i]), p), p) for i, p in enumerate(parts)]
        out[name] = "/".join(new)
    return out


class _Entries:
    """Lazy view of a checkpoint under normalised names: each name reads one
    stored array, or one layer of a stacked (`scan`) encoder block."""

    def __init__(self, source):
        self.source = source
        self._cache = (None, None)
        stored = list(source.keys())
        prefixed = [k[len("params/"):] if k.startswith("params/") else k for k in stored]
        linen = _linen_names(prefixed)
        self.entries = {}  # name -> (stored key, layer index or None)
        for key, bare in zip(stored, prefixed):
            name = linen[bare]
            if name in _OLD_POSEMB:
                name = _POSEMB
            if name.startswith("Transformer/encoderblock/"):
                rest = name[len("Transformer/encoderblock/"):]
                shape = stored_shape(source, key)
                if not shape:
                    raise ConversionError(
                        f"{key}: a stacked (scan) block weight cannot be a scalar."
                    )
                for i in range(shape[0]):
                    self._add(f"Transformer/encoderblock_{i}/{rest}", (key, i))
            else:
                self._add(name, (key, None))

    def _add(self, name, entry):
        if name in self.entries:
            raise ConversionError(
                f"checkpoint holds {name!r} twice (as {self.entries[name][0]!r} and {entry[0]!r})."
            )
        self.entries[name] = entry

    def shape(self, name):
        key, layer = self.entries[name]
        shape = stored_shape(self.source, key)
        return shape if layer is None else shape[1:]

    def dtype(self, name):
        key, _ = self.entries[name]
        if isinstance(self.source, np.lib.npyio.NpzFile):
            with self.source.zip.open(key + ".npy") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                return np.dtype(read_header(f)[2])
        return np.asarray(self.source[key]).dtype

    def read(self, name):
        key, layer = self.entries[name]
        if layer is None:
            return np.asarray(self.source[key])
        if self._cache[0] != key:  # a stacked array: read once for all its layers
            self._cache = (key, np.asarray(self.source[key]))
        return self._cache[1][layer]


def _num_blocks(names):
    pattern = re.compile(r"Transformer/encoderblock_(\d+)/")
    found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    return max(found) + 1 if found else 0


def _diagnose(lm, entries):
    """Specific messages for the usual mismatches (before the generic ones)."""
    problems = []
    names = entries.entries
    if "embedding/kernel" in names:
        shape = entries.shape("embedding/kernel")
        if len(shape) == 4:
            if tuple(shape[:2]) != tuple(lm.patch_size):
                problems.append(
                    f"embedding/kernel: checkpoint patch size {tuple(shape[:2])}, "
                    f"LM patch_size {tuple(lm.patch_size)} (patch embeddings are not resized)."
                )
            if shape[2] != 3:
                problems.append(
                    f"embedding/kernel: checkpoint has {shape[2]} input channels, LM 3."
                )
            if shape[3] != lm.width:
                problems.append(
                    f"embedding/kernel: checkpoint width {shape[3]}, LM width {lm.width}."
                )
    depth = _num_blocks(names)
    if depth and depth != lm.num_layers:
        problems.append(
            f"Transformer/encoderblock_*: checkpoint has {depth} encoder blocks, "
            f"LM num_layers={lm.num_layers}."
        )
    q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
    if q in names:
        shape = entries.shape(q)
        if len(shape) == 3 and shape[1] != lm.num_heads:
            problems.append(f"{q}: checkpoint has {shape[1]} heads, LM num_heads={lm.num_heads}.")
    mlp = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
    if mlp in names:
        shape = entries.shape(mlp)
        if len(shape) == 2 and shape[1] != lm.mlp_dim:
            problems.append(f"{mlp}: checkpoint mlp_dim {shape[1]}, LM mlp_dim={lm.mlp_dim}.")
    return problems


def _check_posemb(entries, width):
    if _POSEMB not in entries.entries:
        return [f"missing: ['{_POSEMB}']"]
    shape = entries.shape(_POSEMB)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != width:
        return [f"{_POSEMB}: checkpoint shape {shape}, expected (1, num_tokens, {width})."]
    n = shape[1]
    k = int(np.sqrt(n))
    if k * k != n and (k * k + 1 != n or n < 2):
        return [
            f"{_POSEMB}: {n} tokens is neither a square grid nor a square grid "
            "plus a class token."
        ]
    return []


def init_lm_encoder_from_vit(lm, checkpoint, dont_load=DEFAULT_DONT_LOAD):
    """Loads a pretrained ViT into the image encoder of a `GuidingCodeLM`.

    Args:
      lm: the `GuidingCodeLM`; its `image_embedding`, `encoder_posemb` (when
        learned) and `encoder` (blocks and final norm) are overwritten.
      checkpoint: path of a big_vision / AugReg ViT `.npz`, or a mapping from
        '/'-joined names to arrays (see the module docstring for the layouts).
      dont_load: regexes (fullmatch, on names without `params/`) of checkpoint
        entries to ignore; the default drops the class token, the
        classification head, AugReg's `pre_logits` and a MAP head.

    Returns:
      `lm`, for chaining.

    Raises:
      ConversionError (a ValueError) naming the offending keys when the
      checkpoint misses encoder weights, holds unexpected ones (e.g. more
      blocks than the LM) or differs in shape (width, depth, heads, MLP size,
      patch size). Nothing is assigned unless every check passes.
    """
    if not isinstance(lm, registered_class("GuidingCodeLM")):
        raise TypeError(f"expected a GuidingCodeLM; got {type(lm).__name__}.")
    source = _open(checkpoint)
    try:
        return _load(lm, _Entries(source), dont_load)
    finally:
        if source is not checkpoint and hasattr(source, "close"):
            source.close()


def _load(lm, entries, dont_load):
    patterns = [re.compile(p) for p in dont_load]
    names = {n for n in entries.entries if not any(p.fullmatch(n) for p in patterns)}
    targets = vit_encoder_variable_map(lm)

    learned = lm.encoder_posemb.posemb == "learn"
    load_posemb = learned and not any(p.fullmatch(_POSEMB) for p in patterns)
    if not learned and _POSEMB in names:
        warnings.warn(
            f"the LM's encoder position embedding is {lm.encoder_posemb.posemb!r} (not learned); "
            f"the checkpoint's '{_POSEMB}' is not loaded.",
            stacklevel=3,
        )
    problems = _diagnose(lm, entries)
    if load_posemb:
        problems += _check_posemb(entries, lm.width)
    names.discard(_POSEMB)
    missing = sorted(set(targets) - names)
    unexpected = sorted(names - set(targets))
    wrong = []
    for name in sorted(set(targets) & names):
        shape = tuple(entries.shape(name))
        if shape != tuple(targets[name].shape):
            wrong.append(f"{name}: checkpoint {shape}, model {tuple(targets[name].shape)}")
    checked = sorted(set(targets) & names) + ([_POSEMB] if load_posemb and _POSEMB in names else [])
    not_float = [f"{n}: {entries.dtype(n)}" for n in checked if entries.dtype(n).kind != "f"]
    if not_float:
        problems.append(f"not floating-point: {not_float}")
    if missing:
        problems.append(f"missing: {missing}")
    if unexpected:
        problems.append(f"unexpected: {unexpected}")
    if wrong:
        problems.append(f"wrong shapes: {wrong}")
    if problems:
        raise ConversionError(
            "ViT checkpoint does not match the LM's encoder:\n  " + "\n  ".join(problems)
        )

    # Position embedding: drop the class token, resample to the LM's grid.
    posemb_layer = lm.encoder_posemb
    posemb = None
    if load_posemb:
        posemb = entries.read(_POSEMB)
        n = posemb.shape[1]
        if int(np.sqrt(n)) ** 2 + 1 == n:  # big_vision's test for a class-token entry
            posemb = posemb[:, 1:]
        posemb = resample_posemb(posemb, posemb_layer.grid_size)

    for name, var in targets.items():
        value = entries.read(name)
        var.assign(value.astype(var.dtype))
    if posemb is not None:
        posemb_layer.embedding.assign(posemb.astype(posemb_layer.embedding.dtype))
    return lm


def init_lm_encoder_from_base_model(lm, base_model):
    """Starts the LM's image encoder from a trained stage-I `BaseModel`'s trunk.

    Copies the image patch embedding, the position embedding and the
    transformer (blocks and final norm) of `base_model` -- typically the
    no-code ablation's, a ViT already trained to read the task from the image
    -- into `lm`'s encoder; the decoder is untouched. The demo's depth and
    colorization recipes use it (their LMs could not learn the code from a
    randomly initialised encoder on a few thousand images); the paper starts
    from an ImageNet ViT instead (`init_lm_encoder_from_vit`).

    Both must share the ViT geometry (input and patch size, width, depth,
    heads, MLP size, position embedding) and the base model must see the
    image (`with_image_ctx=True`).

    Example:
    >>> baseline = UViMStage1(task, zero_code=True, **sizes); baseline.fit(...)
    >>> init_lm_encoder_from_base_model(lm, baseline.base_model)
    """
    if base_model.image_embedding is None:
        raise ValueError(
            "base_model has no image embedding (with_image_ctx=False); it cannot start "
            "the LM's image encoder."
        )
    pairs = (("image_embedding", lm.image_embedding, base_model.image_embedding),
             ("position embedding", lm.encoder_posemb, base_model.position_embedding),
             ("transformer", lm.encoder, base_model.encoder))
    for name, mine, theirs in pairs:
        want = [tuple(w.shape) for w in mine.weights]
        got = [tuple(w.shape) for w in theirs.weights]
        if want != got:
            raise ValueError(
                f"base_model's {name} has weight shapes {got}; the LM's encoder expects "
                f"{want} (same input/patch size, width, depth, heads and MLP size)."
            )
    for _, mine, theirs in pairs:
        mine.set_weights(theirs.get_weights())
