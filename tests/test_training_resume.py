"""Long runs: a killed and resumed run ends with the same weights as an
uninterrupted one (JAX, tiny UViMStage1 with random code dropout and big_vision's
Adafactor), checkpoint writes are atomic, NaN/inf stops the run with a clear
error, TensorBoard/JSON logs continue at the global step."""

import errno
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

from common import run_json, to_numpy  # noqa: E402
from helpers import panoptic_batch, tiny_stage1  # noqa: E402
from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup  # noqa: E402
from uvim_keras.training import (  # noqa: E402
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    NonFiniteLossError,
    fit_resumable,
    list_checkpoints,
    position_data,
    restore_checkpoint,
    resume,
    save_checkpoint,
)
from uvim_keras.training import checkpoint as ckpt_module  # noqa: E402
from uvim_keras.training import run as run_module  # noqa: E402


def state_of(model):
    """Every variable a checkpoint restores, as numpy arrays."""
    return [to_numpy(v.value).astype(np.float64)
            for v in list(model.variables) + list(model.optimizer.variables)]


# -- exact resume -------------------------------------------------------------------------
DATA = panoptic_batch(n=10, size=16, seed=3)


def make_dataset():
    """Deterministic for a freshly built pipeline: seeded shuffle, stateless noise per
    stream position (as the tfds pipelines), batch 2, repeated. tf.data combines the
    shuffle seed with TensorFlow's global seed (set by keras.utils.set_random_seed),
    so that is fixed too."""
    tf.random.set_seed(0)
    ds = tf.data.Dataset.from_tensor_slices(DATA).shuffle(10, seed=1).repeat().enumerate()

    def augment(i, ex):
        noise = tf.random.stateless_normal(tf.shape(ex["image"]), tf.stack([7, i]), stddev=0.05)
        return {"image": tf.clip_by_value(ex["image"] + noise, -1, 1), "labels": ex["labels"]}

    return ds.map(augment).batch(2, drop_remainder=True)


def stage1_model(seed):
    model = tiny_stage1(seed=seed, code_dropout="random")
    model.compile(optimizer=BigVisionAdafactor(
        CosineWarmup(2e-3, total_steps=6, warmup_steps=2), weight_decay=1e-4,
        global_clipnorm=1.0))
    return model


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="exact resume is checked on JAX")
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    common = dict(total_steps=6, steps_per_epoch=4, checkpoint_every=2, log_every=1, verbose=0)
    # A: uninterrupted, keeping every checkpoint.
    model_a = stage1_model(seed=0)
    result_a = fit_resumable(model_a, make_dataset(), workdir=tmp_path / "a", keep=None, **common)
    assert (result_a.start_step, result_a.step, result_a.restored) == (0, 6, None)
    expected = state_of(model_a)
    assert [c.step for c in list_checkpoints(tmp_path / "a" / "checkpoints")] == [2, 4, 6]

    # B: the same run killed while writing its step-4 checkpoint (after step
    # 4): its workdir holds the step-2 checkpoint and a partial write.
    b = tmp_path / "b" / "checkpoints"
    ckpt2 = tmp_path / "a" / "checkpoints" / "ckpt-000000002"
    shutil.copytree(ckpt2, b / "ckpt-000000002")
    partial = b / ".tmp-ckpt-000000004-123-abcd"
    partial.mkdir()
    (partial / "state.npz").write_bytes(b"PK\x03\x04 cut")

    # C: the rerun builds a fresh model (another init here) and resumes.
    model_c = stage1_model(seed=123)
    result_c = fit_resumable(model_c, make_dataset(), workdir=tmp_path / "b", keep=2, **common)
    assert (result_c.start_step, result_c.step, result_c.restored.step) == (2, 6, 2)
    names = [v.path for v in list(model_a.variables) + list(model_a.optimizer.variables)]
    got = state_of(model_c)
    assert len(got) == len(expected)
    for name, a, c in zip(names, expected, got):
        np.testing.assert_allclose(c, a, atol=1e-6, rtol=0, err_msg=name)
    assert sorted(p.name for p in b.iterdir()) == ["ckpt-000000004", "ckpt-000000006"]

    # The checkpoint carries the seed-generator states: code dropout draws
    # from one, and without it the resumed run differs (negative control, on
    # the compiled model_a).
    seeds = [v for v in model_a.variables if "seed_generator" in v.path]
    assert len(seeds) == 2                        # code dropout + quantizer
    restore_checkpoint(model_a, ckpt2)
    for v in seeds:
        v.assign(to_numpy(v.value) + 17)
    model_a.fit(make_dataset().skip(2), steps_per_epoch=4, epochs=1, verbose=0, shuffle=False)
    diff = max(np.abs(a - b).max() for a, b in zip(expected, state_of(model_a)))
    assert diff > 1e-4

    # Codebook usage, losses and the learning rate were logged at global steps.
    lines = [json.loads(x) for x in (tmp_path / "b" / "logs" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [x["step"] for x in lines] == [3, 4, 5, 6]
    schedule = CosineWarmup(2e-3, total_steps=6, warmup_steps=2)
    for x in lines:
        assert {"loss", "reconstruction_loss", "codebook_max_ratio",
                "codebook_zeros_ratio"} <= set(x)
        assert x["learning_rate"] == pytest.approx(float(schedule(x["step"] - 1)), abs=1e-9)
    tags = set()
    for event_file in (tmp_path / "a" / "logs" / "train").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {(v.tag, event.step) for v in event.summary.value}
    for tag in ("loss", "learning_rate", "codebook_max_ratio", "codebook_zeros_ratio"):
        assert {(tag, s) for s in range(1, 7)} <= tags


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution on JAX")
def test_resume_under_model_parallelism_is_exact_and_keeps_shardings():
    """2 x 4 ModelParallel on 8 CPU devices (a subprocess: the device count is
    fixed when JAX starts): the sharded VQ dictionary and attention/MLP kernels
    are gathered into the checkpoint and restored onto their shardings."""
    script = pathlib.Path(__file__).with_name("_resume_model_parallel.py")
    result = run_json([sys.executable, script], timeout=600,
                      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert (result["start_step"], result["step"]) == (2, 4)
    assert result["max_abs_diff"] <= 1e-6
    assert result["dictionary_sharding"] == "PartitionSpec('model', None)" or \
        result["dictionary_sharding"] == "P('model', None)"
    assert result["same_shardings"]


# -- a small Keras model for the file-level tests (all backends) ----------------------------
def dense_model(units=1, lr=1e-2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def xy_dataset(n=8, bad_at=None, bad_value=np.nan):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype("float32")
    y = x.sum(-1, keepdims=True)
    if bad_at is not None:
        y[bad_at] = bad_value
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(1).repeat()


@pytest.mark.multibackend
def test_partial_writes_are_never_trusted(tmp_path, monkeypatch):
    model = dense_model()
    d = tmp_path / "ckpt"
    save_checkpoint(model, d, step=1)
    model.layers[0].kernel.assign(np.ones((3, 1), "float32"))
    save_checkpoint(model, d, step=2)
    good = [to_numpy(v.value) for v in model.variables]

    # A kill during the write of step 3: np.savez dies halfway through the file.
    def dying_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt_module.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, d, step=3)
    monkeypatch.undo()
    assert any(p.name.startswith(".tmp-ckpt-000000003") for p in d.iterdir())
    # A filesystem without atomic rename: step 4 renamed, state.npz truncated.
    save_checkpoint(model, d, step=4)
    state = d / "ckpt-000000004" / "state.npz"
    state.write_bytes(state.read_bytes()[:-20])
    # Step 5: meta.json never written.
    save_checkpoint(model, d, step=5)
    (d / "ckpt-000000005" / "meta.json").unlink()
    assert [c.step for c in list_checkpoints(d)] == [1, 2]
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        restore_checkpoint(model, d / "ckpt-000000004")

    # Step 6: the right size but damaged bytes: the CRC check rejects it
    # before anything is assigned, and resume falls back to step 2.
    save_checkpoint(model, d, step=6)
    state = d / "ckpt-000000006" / "state.npz"
    raw = bytearray(state.read_bytes())
    raw[60:68] = b"\xff" * 8
    state.write_bytes(bytes(raw))
    model.layers[0].kernel.assign(np.zeros((3, 1), "float32"))
    before = [to_numpy(v.value) for v in model.variables]
    with pytest.raises(CheckpointError, match="corrupt"):
        restore_checkpoint(model, d / "ckpt-000000006")
    for a, b in zip(before, [to_numpy(v.value) for v in model.variables]):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        info = resume(model, d)
    assert info.step == 2
    for a, b in zip(good, [to_numpy(v.value) for v in model.variables]):
        np.testing.assert_array_equal(a, b)
    # The next save sweeps the leftovers of the killed write.
    save_checkpoint(model, d, step=7, keep=None)
    assert not any(p.name.startswith(".tmp-") for p in d.iterdir())


@pytest.mark.multibackend
def test_keep_last_k_and_every_n(tmp_path):
    model = dense_model()
    for step in range(1, 8):
        save_checkpoint(model, tmp_path, step=step, keep=2, keep_every_n_steps=3)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 6, 7]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".trash"))]
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(model, tmp_path, step=8, keep=0)


@pytest.mark.multibackend
def test_checkpoint_restores_optimizer_and_checks_fit(tmp_path):
    model = dense_model()
    model.fit(xy_dataset(), steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    info = save_checkpoint(model, tmp_path)
    assert info.step == 3 and info.path.endswith("ckpt-000000003")
    expected = state_of(model)
    other = dense_model()
    other.layers[0].kernel.assign(np.full((3, 1), 5.0, "float32"))
    assert restore_checkpoint(other, info.path).step == 3
    assert int(to_numpy(other.optimizer.iterations)) == 3
    for a, b in zip(expected, state_of(other)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="does not fit"):
        restore_checkpoint(dense_model(units=2), info.path)
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(CheckpointError, match="not compiled"):
        restore_checkpoint(uncompiled, info.path)
    assert resume(model, tmp_path / "nothing") is None


@pytest.mark.multibackend
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nonfinite_loss_stops_with_step_and_value(tmp_path, bad_value):
    model = dense_model()
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: loss=(nan|inf)"):
        fit_resumable(model, xy_dataset(bad_at=2, bad_value=bad_value), workdir=tmp_path,
                      total_steps=6, checkpoint_every=1, verbose=0)
    # Steps 1 and 2 were saved; the bad step never was.
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [c.step for c in checkpoints][-1] == 2
    restore_checkpoint(model, checkpoints[-1])
    assert all(np.isfinite(a).all() for a in state_of(model))


@pytest.mark.multibackend
def test_fit_resumable_data_forms_and_errors(tmp_path):
    model = dense_model()
    seen = []

    def make(start):
        seen.append(start)
        return xy_dataset()

    fit_resumable(model, make, workdir=tmp_path, total_steps=2, steps_per_epoch=2,
                  log_every=None, verbose=0)
    result = fit_resumable(model, make, workdir=tmp_path, total_steps=2, verbose=0)
    assert seen == [0] and result.history is None and result.step == 2  # nothing left to do
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit_resumable(dense_model(), make, workdir=tmp_path, total_steps=4, resume=False)
    with pytest.raises(TypeError, match="stream of batches"):
        fit_resumable(dense_model(), {"x": np.zeros(3)}, workdir=tmp_path / "x", total_steps=1)
    # A python generator: the consumed batches are dropped.
    x = np.arange(12, dtype="float32").reshape(4, 3)
    batches = ((x[i % 4][None], x[i % 4].sum(keepdims=True)[None]) for i in range(100))
    result = fit_resumable(model, batches, workdir=tmp_path, total_steps=4, log_every=1,
                           verbose=0)
    assert (result.start_step, result.step) == (2, 4)
    assert pathlib.Path(os.path.join(tmp_path, "logs", "metrics.jsonl")).exists()
    # Batches that are dicts (UViM's inputs) reach Keras as (x,) tuples.
    stream = position_data(iter([{"image": 0}, {"image": 1}, {"image": 2}]), 1)
    assert list(run_module._with_example(stream)[0]) == [({"image": 1},), ({"image": 2},)]


# -- corrupt checkpoints, pruning, a full disk ---------------------------------------------
def corrupt(checkpoint_dir):
    """Damages state.npz's bytes but keeps its size: only the CRC check sees it."""
    state = pathlib.Path(checkpoint_dir) / "state.npz"
    raw = bytearray(state.read_bytes())
    raw[60:68] = b"\xff" * 8
    state.write_bytes(bytes(raw))


@pytest.mark.multibackend
def test_all_checkpoints_corrupt_is_an_error_not_a_restart(tmp_path):
    d = tmp_path / "checkpoints"
    fit_resumable(dense_model(), xy_dataset(), workdir=tmp_path, total_steps=3,
                  checkpoint_every=1, log_every=None, verbose=0)
    assert [c.step for c in list_checkpoints(d)] == [1, 2, 3]
    for c in list_checkpoints(d):
        corrupt(c.path)
    model = dense_model()
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        with pytest.raises(CorruptCheckpointError, match=r"no readable checkpoint in .*: the "
                           r"unreadable ones are in .*corrupt \(ckpt-000000001, ckpt-000000002, "
                           r"ckpt-000000003\); resuming would start again from step 0"):
            fit_resumable(model, xy_dataset(), workdir=tmp_path, total_steps=6,
                          checkpoint_every=1, log_every=None, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 0  # nothing trained
    assert list_checkpoints(d) == []
    # Rerunning does not restart from 0 either: corrupt/ still says why.
    with pytest.raises(CorruptCheckpointError, match="no readable checkpoint"):
        resume(dense_model(), d)
    # Moving corrupt/ away is the explicit way to start from scratch.
    (d / "corrupt").rename(tmp_path / "kept_aside")
    result = fit_resumable(dense_model(), xy_dataset(), workdir=tmp_path, total_steps=2,
                           checkpoint_every=1, log_every=None, verbose=0)
    assert (result.start_step, result.step, result.restored) == (0, 2, None)


@pytest.mark.multibackend
def test_corrupt_newest_resumes_from_previous_and_pruning_keeps_valid_ones(tmp_path):
    d = tmp_path / "checkpoints"
    common = dict(workdir=tmp_path, checkpoint_every=1, keep=2, log_every=None, verbose=0)
    fit_resumable(dense_model(), xy_dataset(), total_steps=4, **common)
    assert [c.step for c in list_checkpoints(d)] == [3, 4]
    corrupt(d / "ckpt-000000004")
    model = dense_model()
    with pytest.warns(UserWarning, match=r"unreadable checkpoint \(moved to .*corrupt"):
        result = fit_resumable(model, xy_dataset(), total_steps=6, **common)
    assert (result.start_step, result.restored.step, result.step) == (3, 3, 6)
    # The corrupt step-4 checkpoint was set aside, never counted as kept: the
    # valid checkpoints written after the resume are the ones kept.
    assert [c.step for c in list_checkpoints(d)] == [5, 6]
    assert sorted(p.name for p in (d / "corrupt").iterdir()) == ["ckpt-000000004"]
    for c in list_checkpoints(d):
        restore_checkpoint(dense_model(), c)  # every kept checkpoint reads


@pytest.mark.multibackend
def test_pruning_never_deletes_newer_checkpoints_or_the_new_one(tmp_path):
    model = dense_model()
    for step in (5, 6):
        save_checkpoint(model, tmp_path, step=step, keep=None)
    # A run that continues from an older state saves step 2 with keep=1: the
    # higher steps are neither deleted nor counted, the new one is kept.
    save_checkpoint(model, tmp_path, step=1, keep=None)
    save_checkpoint(model, tmp_path, step=2, keep=1)
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 5, 6]


@pytest.mark.multibackend
def test_full_disk_names_the_path_deletes_nothing_and_the_run_resumes(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    common = dict(workdir=tmp_path, checkpoint_every=1, keep=2, log_every=None, verbose=0)
    fit_resumable(dense_model(), xy_dataset(), total_steps=2, **common)
    real_savez = ckpt_module.np.savez

    def full_disk(f, **arrays):
        f.write(b"PK\x03\x04 part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_module.np, "savez", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        fit_resumable(dense_model(), xy_dataset(), total_steps=4, **common)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"cannot write checkpoint {d / 'ckpt-000000003'} (writing "
                              "state.npz): [Errno 28] No space left on device; nothing was "
                              f"deleted, a rerun resumes from {d / 'ckpt-000000002'} (step 2)")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert error.filename == str(d / "ckpt-000000003")
    assert [c.step for c in list_checkpoints(d)] == [1, 2]
    assert not [p for p in d.iterdir() if p.name.startswith((".tmp", ".trash"))]
    # Space again: the rerun resumes from step 2.
    monkeypatch.setattr(ckpt_module.np, "savez", real_savez)
    result = fit_resumable(dense_model(), xy_dataset(), total_steps=4, **common)
    assert (result.start_step, result.restored.step, result.step) == (2, 2, 4)
    assert [c.step for c in list_checkpoints(d)] == [3, 4]
