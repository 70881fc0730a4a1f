"""The layout of a preset's weights, and the upgrade of older presets.

`uvim_preset.json` records `weights_layout`:

* 1 (or no such key): the transformer MLP kernels are stored (in, out), as
  Keras' `Dense`, and each attention layer holds its eight arrays itself
  (presets written before the MLP kernels were stored (out, in));
* 2: the MLP kernels are stored (out, in); attention as in 1;
* 3: every transformer projection is a `keras.layers.EinsumDense`: an
  attention layer's arrays live in its `query`, `key`, `value` and
  `attention_output` sublayers (Keras' quantization and LoRA apply to them);
  MLP kernels (out, in) as in 2.

Keras loads weights by path and shape only, so an older file would fail (or,
for a square MLP, load transposed). Loading therefore checks the layout
first: cached conversions of named presets are upgraded in place (the cache
is ours), any other preset folder gets a `PresetError` naming
`upgrade_weights_layout`, which rewrites it.

>>> from uvim_keras.presets import upgrade_weights_layout
>>> upgrade_weights_layout("my_old_preset")  # once; then UViM.from_preset works
"""

import json
import os
import re
import shutil

WEIGHTS_LAYOUT = 3
LAYOUT_KEY = "weights_layout"
PRESET_MARKER = "uvim_preset.json"  # a preset folder's own record (also `cache.PRESET_MARKER`)
# Keras' h5 paths of the MLP kernels: ".../mlp/dense_0/vars/0" (vars/1 is the bias).
_MLP_KERNEL = re.compile(r"(?:^|/)mlp/dense_[01]/vars/0$")
# An attention layer's own arrays in layouts 1 and 2: kernels of query, key,
# value, output, then (when it has biases) their biases, in that order.
_ATTENTION_ARRAY = re.compile(r"^(?P<layer>(?:.*/)?(?:self_|cross_)?attention)/vars/(?P<index>\d+)$")
_ATTENTION_PARTS = ("query", "key", "value", "attention_output")


def read_info(preset_dir):
    """The `uvim_preset.json` of a local preset folder as a dict, or None
    when there is none."""
    path = os.path.join(preset_dir, PRESET_MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _recorded_layout(info):
    """The `weights_layout` a `uvim_preset.json` dict records (1 when none)."""
    return int(info.get(LAYOUT_KEY, 1))


def weights_layout(preset_dir):
    """The `weights_layout` of a local preset folder (1 when not recorded),
    or None when the folder has no `uvim_preset.json`."""
    info = read_info(preset_dir)
    return None if info is None else _recorded_layout(info)


def is_outdated(preset_dir):
    layout = weights_layout(preset_dir)
    return layout is not None and layout < WEIGHTS_LAYOUT


def check_weights_layout(preset_dir, error=ValueError):
    """Raises `error` when the folder's weights are in another layout."""
    layout = weights_layout(preset_dir)
    if layout is None or layout == WEIGHTS_LAYOUT:
        return
    if layout > WEIGHTS_LAYOUT:
        raise error(
            f"preset {os.fspath(preset_dir)} has weights_layout {layout}, written by a newer "
            f"uvim-keras; this one reads layout {WEIGHTS_LAYOUT}. Upgrade uvim-keras."
        )
    raise error(
        f"preset {os.fspath(preset_dir)} was written by an older uvim-keras "
        f"(weights_layout {layout}); this one reads weights_layout {WEIGHTS_LAYOUT}. "
        f"Upgrade the folder once with "
        f"uvim_keras.presets.upgrade_weights_layout({os.fspath(preset_dir)!r})."
    )


def rewrite_h5(path, transform):
    """Rewrites a Keras `.weights.h5` file: every dataset `name` (its path in
    the file) becomes the datasets `transform(name, array)` returns, a list of
    `(new_name, array)`; groups are made as needed (a new layer group gets
    Keras' `name` attribute) and the attributes of existing ones are kept.
    The new file replaces the old one atomically. Returns how many datasets
    `transform` changed (renamed, split or replaced)."""
    import h5py

    changed = 0
    with h5py.File(path, "r") as src:
        datasets, groups = [], []
        src.visititems(lambda name, obj: (
            datasets if isinstance(obj, h5py.Dataset) else groups).append(name))
        tmp = path + ".tmp"
        try:
            with h5py.File(tmp, "w") as dst:
                dst.attrs.update(src.attrs)
                for name in groups:
                    dst.require_group(name).attrs.update(src[name].attrs)
                for name in datasets:
                    data = src[name][()]
                    out = transform(name, data)
                    changed += len(out) != 1 or out[0][0] != name or out[0][1] is not data
                    for new_name, new in out:
                        parent = new_name.rsplit("/", 1)[0]
                        if parent not in dst:  # ".../<layer>/vars": Keras names the layer
                            group = dst.require_group(parent)
                            group.attrs["name"] = parent.split("/")[-2]
                        dst.create_dataset(new_name, data=new).attrs.update(src[name].attrs)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return changed


def rewrite_h5_arrays(path, transform):
    """`rewrite_h5` for a `transform(name, array) -> array` that keeps every
    dataset's name; returns how many arrays it changed."""
    return rewrite_h5(path, lambda name, data: [(name, transform(name, data))])


def _transpose_mlp_kernel(name, value):
    if not _MLP_KERNEL.search(name):
        return value
    if value.ndim != 2:
        raise ValueError(f"{name} has shape {value.shape}; expected a matrix.")
    return value.T.copy()


def transpose_mlp_kernels(path):
    """Transposes the MLP kernels of one `.weights.h5` file (layout 1 <-> 2);
    returns how many there were."""
    return rewrite_h5_arrays(path, _transpose_mlp_kernel)


def _attention_sublayers(name, value):
    """Layout 2 -> 3: an attention layer's array i goes to the `vars/{i // 4}`
    (kernel, then bias) of its sublayer `_ATTENTION_PARTS[i % 4]`."""
    match = _ATTENTION_ARRAY.match(name)
    if match is None:
        return [(name, value)]
    index = int(match["index"])
    if index >= 2 * len(_ATTENTION_PARTS):
        raise ValueError(f"{name}: an attention layer has at most 8 arrays.")
    part, var = _ATTENTION_PARTS[index % 4], index // 4
    return [(f"{match['layer']}/{part}/vars/{var}", value)]


def upgrade_h5(path, layout):
    """Rewrites one `.weights.h5` file of weights_layout `layout` in the
    current layout; returns how many arrays moved or changed."""
    changed = transpose_mlp_kernels(path) if layout < 2 else 0
    if layout < 3:
        changed += rewrite_h5(path, _attention_sublayers)
    return changed


def upgrade_weights_layout(preset_dir):
    """Rewrites a preset folder saved by an older uvim-keras in the current
    layout; returns the number of arrays moved or transposed (0 when the
    folder is already current).

    The upgrade is made in a copy of the folder that replaces the original
    only when complete (two renames), so an interrupted run leaves the old
    folder (or, between the renames, `<folder>.upgrade-old`) intact.
    """
    preset_dir = os.path.normpath(os.fspath(preset_dir))
    info = read_info(preset_dir)
    if info is None:
        raise ValueError(f"{preset_dir} has no {PRESET_MARKER}: not a uvim-keras preset folder.")
    layout = _recorded_layout(info)
    if layout >= WEIGHTS_LAYOUT:
        return 0
    staging, old = preset_dir + ".upgrade-tmp", preset_dir + ".upgrade-old"
    for leftover in (staging, old):
        if os.path.exists(leftover):
            raise ValueError(f"{leftover} exists (an earlier upgrade was interrupted); "
                             "check which folder is complete and remove the other.")
    shutil.copytree(preset_dir, staging)
    try:
        count = sum(
            upgrade_h5(os.path.join(staging, name), layout)
            for name in sorted(os.listdir(staging)) if name.endswith(".weights.h5")
        )
        info[LAYOUT_KEY] = WEIGHTS_LAYOUT
        with open(os.path.join(staging, PRESET_MARKER), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(preset_dir, old)
    os.rename(staging, preset_dir)
    shutil.rmtree(old)
    return count
