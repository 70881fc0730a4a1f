"""Resumable checkpoints: model state, optimizer state, RNG state, data position.

A checkpoint is a directory ``<directory>/ckpt-<step:09d>/`` holding

* ``state.npz``: one array per variable, in order: every variable of
  ``model.variables`` (trainable weights, non-trainable weights such as the
  VQ dictionary and counts, and the `SeedGenerator` states of code dropout,
  the quantizer's splitting noise and dropout layers), then
  ``model.optimizer.variables`` (``iterations`` and every slot), then
  Keras' global seed generator when one exists;
* ``meta.json``, written last: the step (= batches consumed = the data
  position), the epoch, each variable's path, shape and dtype, the size of
  ``state.npz`` and user data (``extra``).

Writes are atomic: everything is written (and fsynced) into a hidden
``.tmp-ckpt-*`` directory that is then renamed into place with
``os.replace``; old checkpoints are renamed to ``.trash-*`` before they are
deleted. A run killed at any moment therefore leaves either a complete
checkpoint or none that `list_checkpoints` would return: a directory is only
trusted when its name is ``ckpt-<step>``, its ``meta.json`` parses and
``state.npz`` has the recorded size; restoring also checks every array (the
zip CRCs of ``.npz``) *before* assigning anything, and `resume` falls back
to the previous checkpoint when the newest cannot be read, moving the
unreadable one into ``<directory>/corrupt/`` (named in a warning) so that
it is never resumed from or counted by pruning again. When checkpoints
exist but none can be read (or only ``corrupt/`` holds any), `resume`
raises `CorruptCheckpointError` instead of starting again from step 0.

Pruning (``keep``) only ever deletes checkpoints *older* than the one just
written, keeping the newest ``keep`` of those up to it: a checkpoint with a
higher step (from a run this one does not continue) is neither deleted nor
counted. A write that fails (a full disk: ``OSError``) removes its partial
files, deletes nothing and raises `CheckpointWriteError` (an ``OSError``
too, with the errno) whose one-line message names the path; the earlier
checkpoints stay intact and a rerun resumes from the newest.

Variables are matched by position (variable paths contain global layer
counters such as ``seed_generator_3`` that differ between processes) and
checked by shape and dtype, so restore into a model built with the same
configuration. One writer per directory. Multi-host JAX: every process calls
`save_checkpoint` (arrays are gathered with ``process_allgather``), process
0 writes; every process restores from the (shared) directory.
"""

import dataclasses
import json
import os
import re
import shutil
import time
import uuid
import warnings

import keras
import numpy as np

FORMAT = "uvim_keras.checkpoint/1"
STATE_FILE = "state.npz"
META_FILE = "meta.json"
PREFIX = "ckpt-"
CORRUPT_DIR = "corrupt"
_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A complete-looking checkpoint whose arrays cannot be read (or, from
    `resume`, a directory whose checkpoints are all unreadable)."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (e.g. a full disk). An ``OSError`` too:
    ``errno`` and ``filename`` are those of the failed write; the message is
    one line naming the checkpoint's path."""

    def __init__(self, message, errno=None, filename=None):
        super().__init__(message)
        self.errno, self.filename = errno, filename
        self.strerror = message

    def __str__(self):  # the message alone (OSError's would prefix errno, append the file)
        return self.args[0]


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk."""

    path: str
    step: int
    epoch: int
    time: float
    extra: dict


# -- which variables --------------------------------------------------------------
def _global_seed_generator():
    try:  # Keras' global SeedGenerator (unseeded keras.random calls), if created.
        from keras.src.backend.common import global_state

        return global_state.get_global_attribute("global_seed_generator")
    except Exception:  # pragma: no cover - private API moved
        return None


def _optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise CheckpointError(
            f"{type(model).__name__} is not compiled: compile it with its optimizer before "
            "saving or restoring a training checkpoint (the optimizer state is part of it).")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer


def training_variables(model):
    """[(group, variable)] that a checkpoint holds, in order."""
    if not model.built:
        raise CheckpointError(f"{type(model).__name__} is not built: build it (or call it on a "
                              "batch) before saving or restoring a checkpoint.")
    out = [("model", v) for v in model.variables]
    out += [("optimizer", v) for v in _optimizer(model).variables]
    seed_gen = _global_seed_generator()
    if seed_gen is not None:
        out.append(("global_seed", seed_gen.state))
    return out


# -- arrays ---------------------------------------------------------------------------
def _to_host(variable):
    value = variable.value
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            from jax.experimental import multihost_utils

            value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(keras.ops.convert_to_numpy(value))


def _storable(array):
    """(array numpy can store in .npz, dtype name to restore)."""
    dtype = str(array.dtype)
    if array.dtype.kind == "V":  # ml_dtypes (bfloat16, float8_*): stored as raw bits
        return array.view(np.dtype(f"uint{8 * array.dtype.itemsize}")), dtype
    return array, dtype


def _restored(array, dtype):
    if str(array.dtype) == dtype:
        return array
    import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy)

    return array.view(getattr(ml_dtypes, dtype, None) or np.dtype(dtype))


def is_main_process():
    """False on every JAX process but the first of a multi-host run."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


def _barrier(name):
    if keras.backend.backend() == "jax":
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)


# -- files ----------------------------------------------------------------------------
def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_file(path, write):
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _remove_dir(path):
    """Renames `path` out of the checkpoint namespace, then deletes it."""
    name = f".trash-{os.path.basename(path)}-{uuid.uuid4().hex}"
    trash = os.path.join(os.path.dirname(path), name)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(directory):
    """Deletes the temporary/trash directories a killed run left behind."""
    for name in os.listdir(directory):
        if name.startswith((".tmp-", ".trash-")):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _read_meta(path):
    """The parsed meta.json of a complete checkpoint directory, else None."""
    match = _NAME.match(os.path.basename(os.path.normpath(path)))
    if not match:
        return None
    try:
        with open(os.path.join(path, META_FILE)) as f:
            meta = json.load(f)
        size = os.path.getsize(os.path.join(path, STATE_FILE))
    except (OSError, ValueError):
        return None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT
            or meta.get("state_bytes") != size or meta.get("step") != int(match.group(1))):
        return None
    return meta


def _info(path, meta):
    return CheckpointInfo(path=path, step=int(meta["step"]), epoch=int(meta.get("epoch", 0)),
                          time=float(meta.get("time", 0.0)), extra=dict(meta.get("extra", {})))


def list_checkpoints(directory):
    """The complete checkpoints in `directory`, oldest first ([] if none).

    Incomplete ones (a write that was killed: a ``.tmp-*`` directory, or a
    ``ckpt-*`` whose ``meta.json`` is missing or whose ``state.npz`` does not
    have the recorded size) are not listed.
    """
    if directory is None or not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        meta = _read_meta(path) if _NAME.match(name) else None
        if meta is not None:
            out.append(_info(path, meta))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(directory):
    """The newest complete checkpoint in `directory`, or None."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


# -- save -----------------------------------------------------------------------------
def optimizer_step(model):
    """The optimizer's ``iterations``: batches trained on, i.e. the data position."""
    return int(keras.ops.convert_to_numpy(_optimizer(model).iterations))


def save_checkpoint(model, directory, step=None, *, epoch=0, extra=None, keep=3,
                    keep_every_n_steps=None):
    """Writes a checkpoint of `model` (compiled and built) atomically.

    Args:
      model: the Keras model; its optimizer state is saved with it.
      directory: the checkpoint directory (created if needed).
      step: batches consumed so far (the data position); default the
        optimizer's ``iterations``.
      epoch: the Keras epoch the step falls in (informational).
      extra: JSON-serialisable user data stored in ``meta.json``.
      keep: how many of the newest checkpoints to keep (None: all).
      keep_every_n_steps: also keep every checkpoint whose step is a
        multiple of this (big_vision's ``keep_ckpt_steps``).
    Returns:
      The `CheckpointInfo` of the new checkpoint.
    """
    step = optimizer_step(model) if step is None else int(step)
    if step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    if keep is not None and int(keep) < 1:
        raise ValueError(f"keep={keep} must be >= 1 (or None to keep all).")
    variables = training_variables(model)
    arrays, specs = {}, []
    for i, (group, v) in enumerate(variables):
        array, dtype = _storable(_to_host(v))
        arrays[f"{i:05d}"] = array
        specs.append({"group": group, "path": v.path, "shape": list(array.shape),
                      "dtype": dtype})
    name = f"{PREFIX}{step:09d}"
    final = os.path.join(directory, name)
    info = None
    if is_main_process():
        meta = _write_checkpoint(directory, final, arrays, {
            "format": FORMAT, "step": step, "epoch": int(epoch), "time": time.time(),
            "backend": keras.backend.backend(), "model_class": type(model).__name__,
            "variables": specs, "extra": extra or {},
        })
        info = _info(final, meta)
        _prune(directory, keep, keep_every_n_steps, step)
    _barrier(f"uvim_keras_checkpoint_{step}")
    return info or CheckpointInfo(final, step, int(epoch), time.time(), dict(extra or {}))


def _write_checkpoint(directory, final, arrays, meta):
    """Writes `arrays` and `meta` as the checkpoint `final`, atomically
    (module doc); an OSError becomes `CheckpointWriteError` with nothing
    deleted and no partial files left. Returns the meta written."""
    tmp = trash = None
    doing = "creating the directory"
    try:
        os.makedirs(directory, exist_ok=True)
        _clean_stale(directory)
        tmp = os.path.join(directory, f".tmp-{os.path.basename(final)}-{os.getpid()}-"
                                      f"{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        state_path = os.path.join(tmp, STATE_FILE)
        doing = f"writing {STATE_FILE}"
        _write_file(state_path, lambda f: np.savez(f, **arrays))
        meta = {**meta, "state_bytes": os.path.getsize(state_path)}
        doing = f"writing {META_FILE}"
        _write_file(os.path.join(tmp, META_FILE),
                    lambda f: f.write(json.dumps(meta, indent=1).encode()))
        _fsync_dir(tmp)
        doing = "moving it into place"
        if os.path.exists(final):  # the same step saved again (e.g. after a resume)
            trash = os.path.join(directory, f".trash-{os.path.basename(final)}-"
                                            f"{uuid.uuid4().hex}")
            os.replace(final, trash)
        try:
            os.replace(tmp, final)
        except OSError:
            if trash is not None:
                os.replace(trash, final)
                trash = None
            raise
        tmp = None
        _fsync_dir(directory)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            latest = latest_checkpoint(directory)
        except OSError:
            latest = None
        resume_from = ("no earlier checkpoint" if latest is None
                       else f"a rerun resumes from {latest.path} (step {latest.step})")
        reason = f"[Errno {e.errno}] {e.strerror}" if e.strerror else str(e)
        raise CheckpointWriteError(
            f"cannot write checkpoint {final} ({doing}): {reason}; nothing was deleted, "
            f"{resume_from}.", errno=e.errno, filename=final) from e
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return meta


def _prune(directory, keep, keep_every_n_steps, saved_step):
    """Deletes the checkpoints older than the newest `keep` up to
    `saved_step` (the one just written); higher steps are left alone."""
    if keep is None:
        return
    checkpoints = [c for c in list_checkpoints(directory) if c.step <= saved_step]
    for c in checkpoints[:-int(keep)]:
        if keep_every_n_steps and c.step % int(keep_every_n_steps) == 0:
            continue
        _remove_dir(c.path)


# -- restore --------------------------------------------------------------------------
def _load_arrays(path, meta):
    """All arrays of a checkpoint, read and CRC-checked before anything is assigned."""
    try:
        with np.load(os.path.join(path, STATE_FILE), allow_pickle=False) as data:
            return [_restored(data[f"{i:05d}"], spec["dtype"])
                    for i, spec in enumerate(meta["variables"])]
    except Exception as e:  # zipfile.BadZipFile, KeyError, OSError, ...
        raise CorruptCheckpointError(f"{path}: {STATE_FILE} cannot be read ({type(e).__name__}: "
                                     f"{e}); the checkpoint is corrupt.") from e


def _check_fits(path, meta, variables):
    specs = meta["variables"]
    problems = []
    if len(specs) != len(variables):
        counts = {}
        for spec in specs:
            counts[spec["group"]] = counts.get(spec["group"], 0) + 1
        mine = {}
        for group, _ in variables:
            mine[group] = mine.get(group, 0) + 1
        problems.append(f"it holds {len(specs)} variables {counts}, the model has "
                        f"{len(variables)} {mine}")
    for spec, (group, v) in zip(specs, variables):
        if spec["group"] != group or tuple(spec["shape"]) != tuple(v.shape):
            problems.append(f"{spec['path']} {tuple(spec['shape'])} ({spec['group']}) vs "
                            f"{v.path} {tuple(v.shape)} ({group})")
        if len(problems) >= 6:
            break
    if problems:
        raise CheckpointError(
            f"{path} does not fit this model (was it built with another configuration or "
            "optimizer?): " + "; ".join(problems))


def restore_checkpoint(model, checkpoint):
    """Restores model, optimizer and RNG state from `checkpoint`.

    `checkpoint`: a `CheckpointInfo` or a ``ckpt-*`` directory. The model
    must be built and compiled with the same configuration and optimizer;
    nothing is assigned unless every array was read and fits.
    Returns the `CheckpointInfo`.
    """
    path = checkpoint.path if isinstance(checkpoint, CheckpointInfo) else os.fspath(checkpoint)
    meta = _read_meta(path)
    if meta is None:
        raise CheckpointError(f"{path} is not a complete checkpoint (no valid {META_FILE}, or "
                              f"{STATE_FILE} has the wrong size: a write that was killed).")
    variables = training_variables(model)
    _check_fits(path, meta, variables)
    arrays = _load_arrays(path, meta)
    for (_, v), array in zip(variables, arrays):
        v.assign(array)
    return _info(path, meta)


def _move_aside(path):
    """Moves the checkpoint `path` into ``corrupt/`` next to it; returns
    its new path (or `path` if it could not be moved)."""
    corrupt = os.path.join(os.path.dirname(path), CORRUPT_DIR)
    target = os.path.join(corrupt, os.path.basename(path))
    if os.path.exists(target):
        target = f"{target}-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(corrupt, exist_ok=True)
        os.replace(path, target)
    except OSError:
        return path
    return target


def resume(model, directory):
    """Restores the newest readable checkpoint in `directory` into `model`.

    Returns its `CheckpointInfo` (``info.step`` batches were consumed; the
    optimizer's ``iterations`` equals it), or None when there is none (the
    model is left as it is). A newest checkpoint that cannot be read is
    moved into ``<directory>/corrupt/`` with a warning in favour of the
    previous one; one that does not fit the model raises `CheckpointError`.
    When there are checkpoints but none can be read, or no checkpoint but
    ``corrupt/`` holds some, raises `CorruptCheckpointError` (naming them):
    a run never silently starts again from step 0. Remove (or rename)
    ``corrupt/`` to start from scratch in that directory.
    """
    moved = []
    for checkpoint in reversed(list_checkpoints(directory)):
        try:
            return restore_checkpoint(model, checkpoint)
        except CorruptCheckpointError as e:
            target = _move_aside(checkpoint.path) if is_main_process() else checkpoint.path
            moved.append(target)
            warnings.warn(f"skipping an unreadable checkpoint (moved to {target}): {e}",
                          stacklevel=2)
    corrupt = os.path.join(os.fspath(directory), CORRUPT_DIR) if directory is not None else None
    aside = sorted(os.listdir(corrupt)) if corrupt and os.path.isdir(corrupt) else []
    if moved or aside:
        names = ", ".join(aside or [os.path.basename(p) for p in moved])
        raise CorruptCheckpointError(
            f"no readable checkpoint in {directory}: the unreadable ones are in {corrupt} "
            f"({names}); resuming would start again from step 0. Remove or rename {corrupt} "
            "to start from scratch, or put a readable checkpoint back.")
    return None


__all__ = [
    "CheckpointError", "CheckpointInfo", "CheckpointWriteError", "CorruptCheckpointError",
    "is_main_process",
    "latest_checkpoint", "list_checkpoints", "optimizer_step",
    "restore_checkpoint", "resume", "save_checkpoint", "training_variables",
]
