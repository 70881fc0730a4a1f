"""Presets and their cache: ownership (what --overwrite and remove_preset may
delete), integrity (recorded sizes and sha256 of a preset's files, pinned
downloads, finite real checkpoint arrays, one authoritative stage-I config),
concurrency (two processes on the same named preset or the same download)
and crashes (a process killed at each write step; the next load repairs),
and a read-only cache. Offline: checkpoints come from the big_vision fixtures
over a loopback HTTP server; the other processes are `python -c` children."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from common import BIG_VISION_FIXTURES, LAYOUT2, REPO, assert_succeeded, last_json_line
from presets_helpers import fixture_bytes, fixture_spec
from presets_helpers import cache_dir, registered, server  # noqa: F401  (fixtures)

import uvim_keras  # noqa: F401  (selects the default backend before keras)

TESTS = REPO / "tests"
WEIGHTS = REPO / "weights"
STAGE1 = "/stageI_panoptic_params.npz"
STAGE2 = "/stageII_params.npz"


def _copy_bundled(tmp_path, name="shapes_panoptic", to=None):
    dest = tmp_path / (to or name)
    shutil.copytree(WEIGHTS / name, dest)
    return dest


def _npz(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _fixture_arrays(name="stageI_panoptic_params.npz"):
    with np.load(BIG_VISION_FIXTURES / name) as src:
        return {k: src[k] for k in src.files}


def _tree(path):
    """{relative path: (size, mtime_ns)} of every file and folder under `path`."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out


def _data_files(path):
    return sorted(p for p in _tree(path) if not p.startswith("locks")
                  and os.path.isfile(os.path.join(path, p)))


def _h5_arrays(path):
    import h5py

    found = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: found.__setitem__(n, o[()])
                     if isinstance(o, h5py.Dataset) else None)
    return found


def _assert_same_weights(a, b):
    for name in ("model.weights.h5", "task.weights.h5"):
        x, y = _h5_arrays(os.path.join(a, name)), _h5_arrays(os.path.join(b, name))
        assert sorted(x) == sorted(y), name
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")


# -- 1. write only what you create, delete only what you own ---------------------------
@pytest.mark.slow
def test_overwrite_replaces_only_preset_folders(tmp_path):
    from uvim_keras.presets import PresetError
    from uvim_keras.presets.conversion import convert_to_preset
    from presets_helpers import stage2_meta

    _, meta = stage2_meta()
    stage1_npz = BIG_VISION_FIXTURES / "stageI_panoptic_params.npz"

    def convert(out, overwrite=True):
        return convert_to_preset(out, "panoptic", stage1_npz, meta["stage1_panoptic"],
                                 overwrite=overwrite)

    # A folder of yours (no uvim_preset.json): refused, untouched.
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "config.json").write_text("{}")
    with pytest.raises(PresetError, match=rf"{mine} is not a uvim-keras preset folder"):
        convert(mine)
    assert sorted(os.listdir(mine)) == ["config.json", "notes.txt"]
    # A file, and a symlink (even to a preset folder): refused, untouched.
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PresetError, match="is not a folder; it is not replaced"):
        convert(tmp_path / "a_file")
    preset = tmp_path / "preset"
    convert(preset, overwrite=False)
    before = _tree(preset)
    (tmp_path / "link").symlink_to(preset)
    with pytest.raises(PresetError, match="is a symbolic link"):
        convert(tmp_path / "link")
    assert _tree(preset) == before
    # A preset folder that also holds something else: refused, naming it.
    (preset / "my_results.csv").write_text("1,2")
    with pytest.raises(PresetError, match="also holds my_results.csv"):
        convert(preset)
    (preset / "my_results.csv").unlink()
    # Without --overwrite a preset is not replaced; with it, it is (and only it).
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(preset, overwrite=False)
    convert(preset)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "link", "my_project", "preset"]
    assert json.loads((preset / "uvim_preset.json").read_text())["kind"] == "stage1"


def test_remove_preset_removes_only_cached_presets(tmp_path, cache_dir):
    from uvim_keras.presets import PresetError, cache, remove_preset

    outside = _copy_bundled(tmp_path, to="outside_preset")  # a real preset, outside the cache
    presets = cache_dir / "presets"
    presets.mkdir(parents=True)
    shutil.copytree(WEIGHTS / "shapes_depth", presets / "kept")
    (presets / "escape").symlink_to(outside)  # a symlink out of the cache
    (presets / "not_a_preset").mkdir()
    (presets / "not_a_preset" / "data.bin").write_bytes(b"x")
    before = _tree(tmp_path)
    for bad in (str(outside), "..", ".", "../outside_preset", "a/b", "", ".tmp-x~1",
                os.sep + "kept"):
        with pytest.raises(PresetError, match="is not a preset name"):
            remove_preset(bad)
    with pytest.raises(PresetError, match="symbolic link"):
        remove_preset("escape")
    with pytest.raises(PresetError, match="not a uvim-keras preset folder"):
        remove_preset("not_a_preset")
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache/locks")} == before
    assert remove_preset("kept") is True
    assert remove_preset("kept") is False
    assert sorted(os.listdir(presets)) == ["escape", "not_a_preset"]
    assert os.path.isdir(outside) and (outside / "task.weights.h5").is_file()
    with pytest.raises(PresetError, match="is not a preset name"):
        cache.preset_cache_path("../x")


# -- 2. integrity --------------------------------------------------------------------
def test_bundled_presets_carry_their_records():
    from uvim_keras.presets import layout

    for name in ("shapes_panoptic", "shapes_depth", "shapes_colorization"):
        folder = WEIGHTS / name
        info = json.loads((folder / "uvim_preset.json").read_text())
        assert set(info["files"]) == {"config.json", "model.weights.h5", "preprocessor.json",
                                      "task.json", "task.weights.h5"}, name
        assert info["files"] == layout.file_records(folder), name
        assert layout.verify_integrity(folder) is True


@pytest.mark.slow
def test_missing_and_foreign_weight_files_are_refused(tmp_path):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PresetError, layout

    # The depth preset's task.weights.h5 (same shapes) inside the panoptic folder.
    mixed = _copy_bundled(tmp_path, to="mixed")
    shutil.copyfile(WEIGHTS / "shapes_depth" / "task.weights.h5", mixed / "task.weights.h5")
    with pytest.raises(layout.IntegrityError, match=r"task\.weights\.h5 has 1031816 bytes.*"
                                                    r"records 1865048"):
        UViM.from_preset(str(mixed))
    # Same size, other bytes (colorization's and depth's LMs have the same shapes).
    depth = _copy_bundled(tmp_path, "shapes_depth", to="depth_mixed")
    shutil.copyfile(WEIGHTS / "shapes_colorization" / "task.weights.h5", depth / "task.weights.h5")
    with pytest.raises(layout.IntegrityError, match=r"task\.weights\.h5 does not match its "
                                                    r"recorded sha256"):
        UViM.from_preset(str(depth))
    # No task.weights.h5: refused, with or without a record (the LM would be random).
    for record in (True, False):
        folder = _copy_bundled(tmp_path, to=f"no_lm_{record}")
        (folder / "task.weights.h5").unlink()
        if not record:
            info = json.loads((folder / "uvim_preset.json").read_text())
            del info["files"]
            (folder / "uvim_preset.json").write_text(json.dumps(info))
        with pytest.raises(PresetError, match=r"task\.json but no task\.weights\.h5"):
            UViM.from_preset(str(folder))
    # No model.weights.h5: refused for the stage-I model too.
    folder = _copy_bundled(tmp_path, to="no_backbone")
    (folder / "model.weights.h5").unlink()
    with pytest.raises(PresetError, match=r"has no model\.weights\.h5"):
        UViMStage1.from_preset(str(folder))
    # A task added to a stage-I preset after it was saved.
    stage1 = tmp_path / "stage1"
    UViM.from_preset("shapes_panoptic").stage1.save_to_preset(str(stage1))
    for name in ("task.json", "task.weights.h5"):
        shutil.copyfile(WEIGHTS / "shapes_panoptic" / name, stage1 / name)
    with pytest.raises(layout.IntegrityError, match=r"task\.json is not in the preset's record"):
        UViM.from_preset(str(stage1))
    # A folder you trust as it is: record it again, then it loads.
    layout.record_integrity(depth)
    assert isinstance(UViM.from_preset(str(depth)), UViM)


def test_tampered_file_of_same_size_is_caught_even_with_its_mtime_restored(tmp_path, monkeypatch):
    from uvim_keras import UViMStage1
    from uvim_keras.presets import layout

    folder = _copy_bundled(tmp_path)
    hashed = []
    real = layout.file_sha256
    monkeypatch.setattr(layout, "file_sha256", lambda p, *a: hashed.append(os.path.basename(p))
                        or real(p, *a))
    layout.verify_integrity(folder)
    assert sorted(hashed) == ["config.json", "model.weights.h5", "preprocessor.json",
                              "task.json", "task.weights.h5"]
    hashed.clear()
    layout.verify_integrity(folder)
    assert hashed == []  # once per process and file version: the second load only stats
    path = folder / "model.weights.h5"
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime back; ctime cannot be
    with pytest.raises(layout.IntegrityError, match=r"model\.weights\.h5 does not match"):
        UViMStage1.from_preset(str(folder))
    assert hashed == ["model.weights.h5"]
    path.write_bytes(bytes(data[:-10]))  # truncated: the size tells, without hashing
    hashed.clear()
    with pytest.raises(layout.IntegrityError, match=r"model\.weights\.h5 has \d+ bytes"):
        UViMStage1.from_preset(str(folder))
    assert hashed == []


def test_saved_presets_record_their_files(tmp_path):
    from uvim_keras import UViM
    from uvim_keras.presets import layout

    uvim = UViM.from_preset("shapes_colorization")
    uvim.save_to_preset(str(tmp_path / "saved"))
    uvim.stage1.save_to_preset(str(tmp_path / "saved_stage1"))
    info = json.loads((tmp_path / "saved" / "uvim_preset.json").read_text())
    assert info["files"] == layout.file_records(tmp_path / "saved")
    assert "task.weights.h5" in info["files"] and "README.md" not in info["files"]
    info1 = json.loads((tmp_path / "saved_stage1" / "uvim_preset.json").read_text())
    assert set(info1["files"]) == {"config.json", "model.weights.h5"}
    # What upload_preset rewrites (the model card, the card fields) is not recorded.
    (tmp_path / "saved" / "README.md").write_text("my own card")
    info["metrics"] = {"FID": 1.0}
    (tmp_path / "saved" / "uvim_preset.json").write_text(json.dumps(info))
    assert layout.verify_integrity(tmp_path / "saved") is True


def test_update_model_card_rewrites_the_card_only(tmp_path):
    import shutil

    from uvim_keras.presets import layout
    from uvim_keras.presets.api import update_model_card
    from uvim_keras.presets.bundled import BUNDLED_DIR

    folder = tmp_path / "copy"
    shutil.copytree(BUNDLED_DIR / "shapes_depth", folder)
    before = layout.file_records(folder)
    update_model_card(folder, metrics={"RMSE": 0.5}, description="re-measured")
    info = json.loads((folder / "uvim_preset.json").read_text())
    assert info["metrics"] == {"RMSE": 0.5} and info["description"] == "re-measured"
    assert info["files"] == before == layout.file_records(folder)
    assert "0.5" in (folder / "README.md").read_text()
    with pytest.raises(TypeError, match="unexpected model card fields"):
        update_model_card(folder, weights="x")
    (folder / "model.weights.h5").write_bytes(b"not the recorded file")
    with pytest.raises(Exception, match="model.weights.h5"):
        update_model_card(folder, metrics={"RMSE": 0.4})
    with pytest.raises(Exception, match="not a saved UViM"):
        update_model_card(tmp_path)


def test_stage1_config_is_authoritative(tmp_path):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras import keras_hub_models as hub
    from uvim_keras.presets import PresetError, layout

    folder = _copy_bundled(tmp_path)
    task = json.loads((folder / "task.json").read_text())
    task["config"]["backbone"]["config"]["code_dropout"] = "none"
    (folder / "task.json").write_text(json.dumps(task))
    with pytest.raises(layout.IntegrityError, match=r"task\.json has \d+ bytes"):
        UViM.from_preset(str(folder))
    layout.record_integrity(folder)  # even when the record accepts the edit
    message = r"task\.json differs from config\.json \(in code_dropout\)"
    with pytest.raises(PresetError, match=message):
        UViM.from_preset(str(folder))
    with pytest.raises(PresetError, match=message):
        hub.UViMImageSegmenter.from_preset(str(folder))
    stage1 = UViMStage1.from_preset(str(folder))  # config.json's
    assert stage1.get_config()["code_dropout"] == "random"


def test_pinned_downloads(server, cache_dir, registered):
    from uvim_keras import UViMStage1
    from uvim_keras.presets import DownloadError, PresetSpec, cache

    good = fixture_bytes("stageI_panoptic_params.npz")
    import hashlib

    pin = {"size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
    arrays = _fixture_arrays()
    arrays["params/encoder_head/bias"] = arrays["params/encoder_head/bias"] + 1.0
    server.files["/tampered.npz"] = _npz(arrays)  # a valid checkpoint, other numbers
    half = len(good) // 2
    server.files["/completed.npz"] = good[:half] + bytes(len(good) - half)  # cut, then filled
    server.files["/longer.npz"] = good + b"\0" * 10
    for path, message in (("/tampered.npz", r"does not match the size and sha256 pinned"),
                          ("/completed.npz", r"does not match the size and sha256 pinned"
                                             r"|did not give a complete \.npz"),
                          ("/longer.npz", r"announces \d+ bytes, the pinned size is")):
        spec = fixture_spec("test_pinned", server, stage1_path=path, complete=False)
        spec = registered(PresetSpec(**{**spec.__dict__, "checksums": {spec.stage1_url: pin}}))
        with pytest.raises(DownloadError, match=message):
            UViMStage1.from_preset(spec.name, progress=False)
        assert _data_files(cache_dir) == [], path  # nothing kept, nothing converted
    # The right file under the same pin converts, and its hashes are in the preset's record.
    spec = fixture_spec("test_pinned", server, complete=False)
    registered(PresetSpec(**{**spec.__dict__, "checksums": {spec.stage1_url: pin}}))
    UViMStage1.from_preset("test_pinned", progress=False)
    info = json.loads((cache_dir / "presets" / "test_pinned" / "uvim_preset.json").read_text())
    assert info["source_files"] == [{"url": spec.stage1_url, **pin}]
    with pytest.raises(ValueError, match="not a sha256"):
        registered(PresetSpec(**{**spec.__dict__, "checksums": {spec.stage1_url: {"sha256": "x"}}}))
    assert cache.known_pin(spec.stage1_url)["sha256"] == pin["sha256"]


def test_first_good_download_pins_the_url(server, cache_dir, registered):
    from uvim_keras import UViMStage1
    from uvim_keras.presets import DownloadError, cache, remove_preset

    server.files["/tofu/stageI_panoptic_params.npz"] = fixture_bytes("stageI_panoptic_params.npz")
    spec = registered(fixture_spec("test_tofu", server, complete=False,
                                   stage1_path="/tofu/stageI_panoptic_params.npz"))
    UViMStage1.from_preset(spec.name, progress=False)
    pin = json.loads(open(cache.pin_path(spec.stage1_url)).read())
    assert pin["size"] == len(fixture_bytes("stageI_panoptic_params.npz"))
    assert remove_preset(spec.name)
    arrays = _fixture_arrays()
    arrays["state/counts"] = arrays["state/counts"] * 2
    server.files["/tofu/stageI_panoptic_params.npz"] = _npz(arrays)  # changed on the server
    with pytest.raises(DownloadError, match=r"does not match the first download's record"):
        UViMStage1.from_preset(spec.name, progress=False)
    assert not os.path.exists(cache_dir / "presets" / spec.name)
    assert [f for f in _data_files(cache_dir) if not f.endswith(".pin.json")] == []


def test_non_finite_or_complex_checkpoints_are_refused(server, cache_dir, registered, tmp_path):
    from uvim_keras import UViMStage1
    from uvim_keras.checkpoints.big_vision import ConversionError
    from uvim_keras.presets import cache
    from uvim_keras.presets.conversion import convert_to_preset
    from presets_helpers import stage2_meta

    arrays = _fixture_arrays()
    nan = {k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    server.files["/nan/stageI_panoptic_params.npz"] = _npz(nan)
    spec = registered(fixture_spec("test_nan", server, complete=False,
                                   stage1_path="/nan/stageI_panoptic_params.npz"))
    with pytest.raises(ConversionError, match=r"checkpoint array '[^']+' has \d+ non-finite "
                                              r"values.*damaged"):
        UViMStage1.from_preset(spec.name, progress=False)
    assert _data_files(cache_dir) == []  # not cached, not pinned, download removed
    assert cache.known_pin(spec.stage1_url) is None
    _, meta = stage2_meta()
    one_inf = dict(arrays)
    one_inf["params/encoder_head/kernel"] = arrays["params/encoder_head/kernel"].copy()
    one_inf["params/encoder_head/kernel"][0, 0] = np.inf
    complex_ = dict(arrays)
    complex_["params/encoder_head/kernel"] = arrays["params/encoder_head/kernel"] + 0j
    for label, data, message in (("inf", one_inf, r"1 non-finite values"),
                                 ("complex", complex_, r"dtype complex\d+ \(complex\)")):
        path = tmp_path / f"{label}.npz"
        path.write_bytes(_npz(data))
        with pytest.raises(ConversionError, match=r"'params/encoder_head/kernel' has " + message):
            convert_to_preset(tmp_path / label, "panoptic", path, meta["stage1_panoptic"])
        assert not os.path.exists(tmp_path / label)


# -- 3. concurrency and crashes (other processes) --------------------------------------
_CHILD = r"""
import json, os, shutil, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["tests"])
import uvim_keras
from uvim_keras.presets import api, cache, conversion, layout, register_preset
from presets_helpers import fixture_spec


class Server:
    def url(self, path):
        return cfg["base"] + path


def touch(path):
    open(path, "w").close()


def wait_for(path):
    for _ in range(1200):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + path)


def die(*args, **kwargs):
    os._exit(17)


kill = cfg.get("kill")
if kill == "download":  # half a file written, then killed
    def _fetch(url, out, *args, **kwargs):
        out.write(b"PK\x03\x04 half a file")
        out.flush()
        os._exit(17)
    cache._fetch = _fetch
elif kill == "save":  # the preset's files written into the staging folder, not its record
    layout.write_info = die
elif kill == "publish":  # complete in the staging folder, not renamed into place
    cache.publish_dir = die
elif kill == "after_publish":  # published; the downloads and links not cleaned up
    cache.record_pin = die
elif kill == "upgrade_copy":  # the staging copy half-rewritten
    layout.upgrade_h5 = die
elif kill == "upgrade_record":  # the staging copy rewritten, its record not written
    layout.write_info = die
elif kill == "upgrade_swap":  # the original renamed aside, the copy not yet in place
    real_rename, renames = os.rename, []
    def rename(a, b):
        renames.append(a)
        if len(renames) == 2:
            os._exit(17)
        real_rename(a, b)
    os.rename = rename
elif kill == "upgrade_cleanup":  # the copy in place, the original half-removed
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        if str(path).endswith(".upgrade-old"):
            os.remove(os.path.join(path, "task.weights.h5"))
            os._exit(17)
        real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree

hold = cfg.get("hold")
if hold:  # tell when the conversion starts, then wait for the go
    real_load = conversion.load_npz
    def load_npz(*args, **kwargs):
        touch(hold["started"])
        wait_for(hold["go"])
        return real_load(*args, **kwargs)
    conversion.load_npz = load_npz
slow = cfg.get("slow_upgrade")
if slow:
    real_upgrade = layout.upgrade_h5
    def upgrade_h5(*args, **kwargs):
        touch(slow)
        time.sleep(1.5)
        return real_upgrade(*args, **kwargs)
    layout.upgrade_h5 = upgrade_h5

spec = cfg.get("spec")
if spec:
    register_preset(fixture_spec(spec["name"], Server(), complete=spec["complete"]),
                    overwrite=True)
if cfg.get("after"):
    wait_for(cfg["after"])
action = cfg["action"]
if action in ("uvim", "stage1"):
    from uvim_keras import UViM, UViMStage1
    model = (UViM if action == "uvim" else UViMStage1).from_preset(spec["name"], progress=False)
    out = {"weights": float(sum(abs(w.numpy()).sum() for w in model.weights))}
else:
    path = api.cached(cfg["name"])
    out = {"path": path, "layout": layout.weights_layout(path)}
print(json.dumps(out))
"""


def _child(cfg, cache_dir, server=None):
    cfg = {"tests": str(TESTS), "base": server.base if server else "", **cfg}
    env = dict(os.environ, UVIM_KERAS_CACHE=str(cache_dir), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=300):
    """The JSON line a `_child` printed last, once it exited with 0."""
    out, err = proc.communicate(timeout=timeout)
    assert_succeeded(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return last_json_line(out)


def _wait_for(path, proc, timeout=120):
    start = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - start < timeout, f"no {path}"
        time.sleep(0.05)


@pytest.mark.slow
def test_processes_share_a_named_preset_and_its_downloads(server, cache_dir, tmp_path):
    """A converts the complete preset and is held while converting; B
    converts the stage-I preset from the same stage-I download and removes
    it when done; C loads A's preset. Before: C converted too (or found a
    half-removed download) and A failed with FileNotFoundError once B
    removed the download."""
    started, go = str(tmp_path / "a_started"), str(tmp_path / "a_go")
    full = {"name": "race_full", "complete": True}
    before = len(server.requests)
    a = _child({"spec": full, "action": "uvim", "hold": {"started": started, "go": go}},
               cache_dir, server)
    _wait_for(started, a)  # A holds race_full's lock, its downloads borrowed
    b = _child({"spec": {"name": "race_s1", "complete": False}, "action": "stage1"},
               cache_dir, server)
    c = _child({"spec": full, "action": "uvim"}, cache_dir, server)
    got_b = _result(b)  # B is done: it removed the shared stage-I download
    assert not os.path.exists(cache_dir / "downloads" / os.path.basename(
        _download_name(server.url(STAGE1))))
    (tmp_path / "a_go").touch()
    got_a, got_c = _result(a), _result(c)
    assert got_a == got_c and got_b["weights"] > 0
    # Each file was downloaded once; C waited for A's conversion and loaded it.
    assert sorted(server.requests[before:]) == [STAGE2, STAGE1]
    presets = sorted(os.listdir(cache_dir / "presets"))
    assert presets == ["race_full", "race_s1"]  # no staging folders or links left
    assert [f for f in _data_files(cache_dir / "downloads") if not f.endswith(".pin.json")] == []


def _download_name(url):
    from uvim_keras.presets import cache

    return cache.download_path(url)


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["download", "save", "publish", "after_publish"])
def test_killed_install_is_repaired_by_the_next_load(kill, server, cache_dir, registered):
    from uvim_keras import UViMStage1

    proc = _child({"spec": {"name": "killed", "complete": False}, "action": "stage1",
                   "kill": kill}, cache_dir, server)
    proc.communicate(timeout=300)
    assert proc.returncode == 17
    left = sorted(_tree(cache_dir))
    spec = registered(fixture_spec("killed", server, complete=False))
    n = len(server.requests)
    stage1 = UViMStage1.from_preset(spec.name, progress=False)
    assert stage1.dict_size == 16
    presets = cache_dir / "presets"
    assert sorted(os.listdir(presets)) == ["killed"], left  # leftovers removed
    assert json.loads((presets / "killed" / "uvim_preset.json").read_text())["files"]
    assert [f for f in os.listdir(cache_dir / "downloads") if not f.endswith(".pin.json")] == []
    # Killed after the download: the next load converts the kept file (after
    # publishing: it only removes the file); killed during it: downloads again.
    assert server.requests[n:] == ([STAGE1] if kill == "download" else [])


def _outdated_cached(cache_dir, name):
    from uvim_keras.presets import cache

    path = cache.preset_cache_path(name)
    shutil.copytree(LAYOUT2 / "preset", path)
    return path


@pytest.fixture(scope="module")
def upgraded_reference(tmp_path_factory):
    from uvim_keras.presets import upgrade_weights_layout

    path = tmp_path_factory.mktemp("reference") / "preset"
    shutil.copytree(LAYOUT2 / "preset", path)
    upgrade_weights_layout(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["upgrade_copy", "upgrade_record", "upgrade_swap",
                                  "upgrade_cleanup"])
def test_killed_upgrade_is_repaired_by_the_next_load(kill, cache_dir, upgraded_reference):
    from uvim_keras.presets import WEIGHTS_LAYOUT, api

    path = _outdated_cached(cache_dir, "old_conversion")
    proc = _child({"name": "old_conversion", "action": "cached", "kill": kill}, cache_dir)
    proc.communicate(timeout=300)
    assert proc.returncode == 17
    left = sorted(os.listdir(cache_dir / "presets"))
    assert left != ["old_conversion"]  # the kill left something behind
    assert api.cached("old_conversion") == path
    assert sorted(os.listdir(cache_dir / "presets")) == ["old_conversion"], left
    info = json.loads(open(os.path.join(path, "uvim_preset.json")).read())
    assert info["weights_layout"] == WEIGHTS_LAYOUT and info["files"]
    _assert_same_weights(path, upgraded_reference)


@pytest.mark.slow
def test_two_processes_upgrade_the_same_cached_preset(cache_dir, tmp_path, upgraded_reference):
    path = _outdated_cached(cache_dir, "shared_old")
    started = str(tmp_path / "upgrading")
    a = _child({"name": "shared_old", "action": "cached", "slow_upgrade": started}, cache_dir)
    b = _child({"name": "shared_old", "action": "cached", "after": started}, cache_dir)
    got_a, got_b = _result(a), _result(b)
    assert got_a == got_b == {"path": path, "layout": 3}
    assert sorted(os.listdir(cache_dir / "presets")) == ["shared_old"]
    _assert_same_weights(path, upgraded_reference)


# -- read-only cache ----------------------------------------------------------------
@contextlib.contextmanager
def _read_only(path, monkeypatch):
    """Makes `path` unwritable, as root too: `chattr +i` (root respects the
    immutable flag); without it, permissions for a non-root user; as root
    without chattr, simulated: `cache.writable` says no and any write under
    `path` raises PermissionError."""
    path = str(path)
    simulate = os.environ.get("UVIM_TEST_SIMULATE_READ_ONLY") == "1"  # (to test the fallback)
    if not simulate and shutil.which("chattr") and subprocess.run(["chattr", "-R", "+i", path],
                                                 capture_output=True).returncode == 0:
        try:
            yield "chattr"
        finally:
            subprocess.run(["chattr", "-R", "-i", path], check=True)
        return
    if not simulate and os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", path], check=True)
        try:
            yield "chmod"
        finally:
            subprocess.run(["chmod", "-R", "u+w", path], check=True)
        return
    from uvim_keras.presets import cache

    def guard(fn):
        def wrapped(p, *args, **kwargs):
            if os.path.abspath(os.fspath(p)).startswith(path):
                raise PermissionError(13, "read-only (simulated)", os.fspath(p))
            return fn(p, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(cache, "writable", lambda: False)
    for name in ("mkdir", "makedirs", "remove", "rename", "rmdir", "replace", "unlink"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    yield "simulated"
    monkeypatch.undo()


@pytest.mark.slow
def test_read_only_cache_loads_what_is_up_to_date(server, cache_dir, registered, monkeypatch,
                                                   capfd):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PresetError, api

    spec = registered(fixture_spec("ro_current", server, complete=False))
    expected = UViMStage1.from_preset(spec.name, progress=False).get_weights()
    old = _outdated_cached(cache_dir, "ro_old")
    missing = registered(fixture_spec("ro_missing", server, complete=False,  # another URL:
                                      stage1_path="/ro/stageI_panoptic_params.npz"))  # no sibling
    before = _tree(cache_dir)
    with _read_only(cache_dir, monkeypatch) as how:
        print("read-only by", how)
        loaded = UViMStage1.from_preset(spec.name, progress=False)
        for a, b in zip(expected, loaded.get_weights()):
            np.testing.assert_array_equal(a, b)
        copy = api.cached("ro_old")  # upgraded in a temporary copy, said on stderr
        assert copy != old and os.path.isdir(copy)
        assert f"upgrade_weights_layout({old!r})" in capfd.readouterr().err
        assert isinstance(UViM.from_preset(copy), UViM)
        with pytest.raises(PresetError, match=r"'ro_missing' is not in the cache and the cache "
                                              r".* cannot be written"):
            UViMStage1.from_preset(missing.name, progress=False)
    assert _tree(cache_dir) == before  # nothing written
