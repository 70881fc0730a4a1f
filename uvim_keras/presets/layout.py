"""The layout of a preset's weights, and the upgrade of older presets.

`uvim_preset.json` records `weights_layout`:

* 1 (or no such key): the transformer MLP kernels are stored (in, out), as
  Keras' `Dense` (presets written before `layers.linear.Linear`);
* 2: they are stored (out, in), as `Linear` holds them.

Keras loads weights by path and shape only, so a layout-1 file would fail with
a shape error (or, for a square MLP, load transposed). Loading therefore
checks the layout first: cached conversions of named presets are upgraded in
place (the cache is ours), any other preset folder gets a `PresetError`
naming `upgrade_weights_layout`, which rewrites it.

>>> from uvim_keras.presets import upgrade_weights_layout
>>> upgrade_weights_layout("my_old_preset")  # once; then UViM.from_preset works
"""

import json
import os
import re
import shutil

WEIGHTS_LAYOUT = 2
LAYOUT_KEY = "weights_layout"
PRESET_MARKER = "uvim_preset.json"  # a preset folder's own record (also `cache.PRESET_MARKER`)
# Keras' h5 paths of the MLP kernels: ".../mlp/dense_0/vars/0" (vars/1 is the bias).
_MLP_KERNEL = re.compile(r"(?:^|/)mlp/dense_[01]/vars/0$")


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
        f"preset {os.fspath(preset_dir)} stores its MLP kernels (in, out) "
        f"(weights_layout {layout}); this uvim-keras stores them "
        f"(out, in) (weights_layout {WEIGHTS_LAYOUT}). Upgrade the folder once with "
        f"uvim_keras.presets.upgrade_weights_layout({os.fspath(preset_dir)!r})."
    )


def rewrite_h5_arrays(path, transform):
    """Rewrites a Keras `.weights.h5` file with every dataset replaced by
    `transform(name, array)` (groups and attributes kept); the new file
    replaces the old one atomically. Returns how many arrays `transform`
    changed (returned another object)."""
    import h5py

    changed = 0

    def copy(src, dst):
        nonlocal changed
        dst.attrs.update(src.attrs)
        for name, obj in src.items():
            if isinstance(obj, h5py.Group):
                copy(obj, dst.create_group(name))
                continue
            data = obj[()]
            new = transform(obj.name.lstrip("/"), data)
            changed += new is not data
            dst.create_dataset(name, data=new).attrs.update(obj.attrs)

    tmp = path + ".tmp"
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            copy(src, dst)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return changed


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


def upgrade_weights_layout(preset_dir):
    """Rewrites a preset folder saved with (in, out) MLP kernels in the current
    layout; returns the number of kernels transposed (0 when the folder is
    already current).

    The upgrade is made in a copy of the folder that replaces the original
    only when complete (two renames), so an interrupted run leaves the old
    folder (or, between the renames, `<folder>.upgrade-old`) intact.
    """
    preset_dir = os.path.normpath(os.fspath(preset_dir))
    info = read_info(preset_dir)
    if info is None:
        raise ValueError(f"{preset_dir} has no {PRESET_MARKER}: not a uvim-keras preset folder.")
    if _recorded_layout(info) >= WEIGHTS_LAYOUT:
        return 0
    staging, old = preset_dir + ".upgrade-tmp", preset_dir + ".upgrade-old"
    for leftover in (staging, old):
        if os.path.exists(leftover):
            raise ValueError(f"{leftover} exists (an earlier upgrade was interrupted); "
                             "check which folder is complete and remove the other.")
    shutil.copytree(preset_dir, staging)
    try:
        count = sum(
            transpose_mlp_kernels(os.path.join(staging, name))
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
