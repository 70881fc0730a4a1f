"""The layout of a preset's weights, the upgrade of older presets, and the
integrity record of a preset folder.

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

Integrity: `uvim_preset.json` also records, under `files`, the size and
sha256 of every file the model is built from (`config.json`, `task.json`,
`preprocessor.json` and the `*.weights.h5` / `*.weights.json` files; not
`README.md` or `metadata.json`, which `upload_preset` may rewrite). Saving
writes it; loading checks it (`verify_integrity`): a missing, added or
changed file is an `IntegrityError` naming it. Sizes are checked on every
load; a file's sha256 once per process, then again only when its (size,
mtime, ctime, inode) changes (ctime cannot be set back by hand, so a
rewritten file is always hashed again; what hashing costs a first load is in
benchmarks/README.md, "Preset integrity").
`record_integrity(folder)` (re)writes the record of a folder you trust.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile

WEIGHTS_LAYOUT = 3
LAYOUT_KEY = "weights_layout"
PRESET_MARKER = "uvim_preset.json"  # a preset folder's own record (also `cache.PRESET_MARKER`)
FILES_KEY = "files"  # uvim_preset.json: {file name: {"size": bytes, "sha256": hex}}
UPGRADE_STAGING, UPGRADE_OLD = ".upgrade-tmp", ".upgrade-old"  # <folder><suffix>, siblings
# Keras' h5 paths of the MLP kernels: ".../mlp/dense_0/vars/0" (vars/1 is the bias).
_MLP_KERNEL = re.compile(r"(?:^|/)mlp/dense_[01]/vars/0$")
# An attention layer's own arrays in layouts 1 and 2: kernels of query, key,
# value, output, then (when it has biases) their biases, in that order.
_ATTENTION_ARRAY = re.compile(r"^(?P<layer>(?:.*/)?(?:self_|cross_)?attention)/vars/(?P<index>\d+)$")
_ATTENTION_PARTS = ("query", "key", "value", "attention_output")


class PresetError(ValueError):
    """A preset handle that cannot be used the way it was asked for."""


class IntegrityError(PresetError):
    """A preset folder's files are not the ones its `uvim_preset.json` records."""


def read_info(preset_dir):
    """The `uvim_preset.json` of a local preset folder as a dict, or None
    when there is none (a `PresetError` when it is not a JSON object)."""
    path = os.path.join(os.fspath(preset_dir), PRESET_MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except ValueError as e:
        raise PresetError(f"{path} is not valid JSON ({e}): the preset's record is damaged.") from e
    if not isinstance(info, dict):
        raise PresetError(f"{path} does not hold a JSON object: the preset's record is damaged.")
    return info


# -- durable writes ----------------------------------------------------------------
def fsync_file(path):
    """Flushes a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    """Flushes a folder's entries (creations, renames) to disk; a no-op where
    folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path):
    """fsyncs every file and folder under `path` (before it is renamed into place)."""
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(root)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path, text):
    """Writes `text` to `path` through a temporary file in the same folder
    that is fsynced and renamed over it: readers see the old or the new file."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would make it (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)
    return path


def write_json_atomic(path, obj, **dump_kwargs):
    """`write_text_atomic` of `obj` as JSON (`json.dumps` arguments)."""
    return write_text_atomic(path, json.dumps(obj, **dump_kwargs))


def write_info(preset_dir, info, record=True):
    """Writes `uvim_preset.json` (atomically; the preset marker, written
    last), with the integrity record of the folder's files when `record`."""
    info = dict(info)
    if record:
        info[FILES_KEY] = file_records(preset_dir)
    write_json_atomic(os.path.join(os.fspath(preset_dir), PRESET_MARKER), info,
                      indent=2, sort_keys=True)
    return info


# -- integrity ----------------------------------------------------------------------
_BUILD_FILES = ("config.json", "task.json", "preprocessor.json")
# (st_dev, st_ino) -> (stamp, sha256) of files hashed by this process.
_HASHED = {}


def is_recorded_name(name):
    """Whether the integrity record covers a file of this name: what the
    model is built from (configs, weights), not the model card or metadata."""
    return name in _BUILD_FILES or name.endswith(".weights.h5") or name.endswith(".weights.json")


def _stamp(st):
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_sha256(path, chunk_size=1 << 22):
    """(sha256 hex, size) of a file; remembers it for `verify_integrity`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            digest.update(block)
        after = os.fstat(f.fileno())
    sha = digest.hexdigest()
    if _stamp(before) == _stamp(after):  # not written to while we read it
        _HASHED[(after.st_dev, after.st_ino)] = (_stamp(after), sha)
    return sha, after.st_size


def _known_sha256(st):
    known = _HASHED.get((st.st_dev, st.st_ino))
    return known[1] if known is not None and known[0] == _stamp(st) else None


def file_records(preset_dir):
    """{name: {"size", "sha256"}} of the folder's recorded files."""
    preset_dir = os.fspath(preset_dir)
    out = {}
    for name in sorted(os.listdir(preset_dir)):
        path = os.path.join(preset_dir, name)
        if is_recorded_name(name) and os.path.isfile(path):
            sha, size = file_sha256(path)
            out[name] = {"size": size, "sha256": sha}
    return out


def record_integrity(preset_dir):
    """Records the size and sha256 of a preset folder's files in its
    `uvim_preset.json` (for a folder you trust: one saved by an older
    uvim-keras, or one whose files you replaced on purpose); returns the
    record."""
    preset_dir = os.fspath(preset_dir)
    info = read_info(preset_dir)
    if info is None:
        raise PresetError(f"{preset_dir} has no {PRESET_MARKER}: not a uvim-keras preset folder.")
    return write_info(preset_dir, info)[FILES_KEY]


def has_integrity_record(preset_dir):
    info = read_info(preset_dir)
    return bool(info) and isinstance(info.get(FILES_KEY), dict)


def verify_integrity(preset_dir, error=IntegrityError, weights=True, info=None):
    """Checks a local preset folder against its `uvim_preset.json`.

    Always: `config.json` is there and, when `weights`, the backbone's
    weights and (with a `task.json`) `task.weights.h5`. With a record (every
    preset saved or converted by this uvim-keras): every recorded file is
    there with its size and sha256 (hashed once per process and file
    version, see the module docstring), and no unrecorded config or weights
    file was added. Raises `error` naming the file; returns True when a
    record was checked, False for a folder without one."""
    preset_dir = os.fspath(preset_dir)
    try:
        names = set(os.listdir(preset_dir))
    except OSError as e:
        raise error(f"cannot read preset folder {preset_dir}: {e.strerror or e}.") from e
    info = read_info(preset_dir) if info is None else info
    record = (info or {}).get(FILES_KEY)
    where = f"preset {preset_dir}"
    if "config.json" not in names:
        raise error(f"{where} has no config.json.")
    if weights:
        if "model.weights.h5" not in names and "model.weights.json" not in names:
            raise error(f"{where} has no model.weights.h5 (the stage-I weights): the folder is "
                        "incomplete.")
        if "task.json" in names and "task.weights.h5" not in names:
            raise error(f"{where} has task.json but no task.weights.h5 (the stage-II LM's "
                        "weights): the folder is incomplete; without them the LM would be random.")
    if not isinstance(record, dict):
        return False
    fix = ("Restore the file from where the preset came from, or save/convert the preset again "
           "(uvim_keras.presets.layout.record_integrity(folder) accepts the folder as it is now).")
    for name in sorted(names - set(record)):
        if is_recorded_name(name):
            raise error(f"{where}: {name} is not in the preset's record ({PRESET_MARKER}); it was "
                        f"added after the preset was saved (another preset's file?). {fix}")
    for name, expected in sorted(record.items()):
        if not weights and name.endswith((".weights.h5", ".weights.json")):
            continue
        path = os.path.join(preset_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            raise error(f"{where}: {name} is missing ({PRESET_MARKER} records it). {fix}") from None
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where}: {name} is not a regular file. {fix}")
        size = expected.get("size") if isinstance(expected, dict) else None
        if size is not None and st.st_size != size:
            raise error(f"{where}: {name} has {st.st_size} bytes, {PRESET_MARKER} records {size} "
                        f"(the file was changed, truncated or replaced). {fix}")
        sha = expected.get("sha256") if isinstance(expected, dict) else None
        if sha is None:
            continue
        got = _known_sha256(st) or file_sha256(path)[0]
        if got != sha:
            raise error(f"{where}: {name} does not match its recorded sha256 ({got[:12]}... != "
                        f"{sha[:12]}...): the file was changed or replaced (another preset's "
                        f"file?). {fix}")
    return True


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


def repair_interrupted_upgrade(preset_dir):
    """Completes or rolls back an upgrade of `preset_dir` that was killed
    (see `upgrade_weights_layout`); returns what it did, "" if nothing.

    The staging copy is complete (fsynced, record written last) before the
    original is renamed away, so: with the folder in place, leftovers are
    removed; without it, a verified staging copy is renamed into place, else
    the original is renamed back."""
    preset_dir = os.path.normpath(os.fspath(preset_dir))
    staging, old = preset_dir + UPGRADE_STAGING, preset_dir + UPGRADE_OLD
    parent = os.path.dirname(preset_dir) or "."
    if os.path.isdir(preset_dir):
        done = []
        for leftover in (staging, old):
            if os.path.lexists(leftover):
                _remove_tree(leftover)
                done.append(os.path.basename(leftover))
        return f"removed {', '.join(done)}" if done else ""
    if os.path.isdir(staging) and _is_complete_copy(staging):
        os.rename(staging, preset_dir)
        fsync_dir(parent)
        if os.path.lexists(old):
            _remove_tree(old)
        return "completed the upgrade"
    if os.path.isdir(old):
        if os.path.lexists(staging):
            _remove_tree(staging)
        os.rename(old, preset_dir)
        fsync_dir(parent)
        return "rolled the upgrade back"
    if os.path.lexists(staging):
        _remove_tree(staging)
        return f"removed {os.path.basename(staging)}"
    return ""


def _remove_tree(path):
    if os.path.islink(path) or not os.path.isdir(path):
        os.remove(path)
    else:
        shutil.rmtree(path)


def _is_complete_copy(folder):
    try:
        info = read_info(folder)
        return (info is not None and _recorded_layout(info) == WEIGHTS_LAYOUT
                and verify_integrity(folder, info=info))
    except PresetError:
        return False


def upgrade_in_place(preset_dir):
    """`cache.upgrade_weights_layout` without the cache's lock."""
    repair_interrupted_upgrade(preset_dir)
    info = read_info(preset_dir)
    if info is None:
        raise PresetError(f"{preset_dir} has no {PRESET_MARKER}: not a uvim-keras preset folder.")
    layout = _recorded_layout(info)
    if layout >= WEIGHTS_LAYOUT:
        return 0
    verify_integrity(preset_dir, info=info)  # never rewrite damaged files into a new record
    staging, old = preset_dir + UPGRADE_STAGING, preset_dir + UPGRADE_OLD
    parent = os.path.dirname(preset_dir) or "."
    try:
        shutil.copytree(preset_dir, staging)
        count = sum(
            upgrade_h5(os.path.join(staging, name), layout)
            for name in sorted(os.listdir(staging)) if name.endswith(".weights.h5")
        )
        info[LAYOUT_KEY] = WEIGHTS_LAYOUT
        fsync_tree(staging)
        write_info(staging, info)  # the record, last: a staging copy with it is complete
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(preset_dir, old)
    fsync_dir(parent)
    os.rename(staging, preset_dir)
    fsync_dir(parent)
    shutil.rmtree(old)
    return count


def upgraded_copy(preset_dir, into=None):
    """An upgraded copy of an outdated preset folder that cannot be written
    (a read-only cache): copied into a new temporary folder (`into`, default
    the system's temp folder) and upgraded there; returns its path (the
    caller removes it)."""
    preset_dir = os.path.normpath(os.fspath(preset_dir))
    root = tempfile.mkdtemp(prefix="uvim-keras-upgraded-", dir=into)
    copy = os.path.join(root, os.path.basename(preset_dir))
    try:
        shutil.copytree(preset_dir, copy)
        for name in os.listdir(copy):  # the copy is ours to write, whatever the modes were
            os.chmod(os.path.join(copy, name), 0o644)
        os.chmod(copy, 0o755)
        upgrade_in_place(copy)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return copy
