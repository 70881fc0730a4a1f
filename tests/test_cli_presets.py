"""`uvim-keras convert | predict | presets` on big_vision fixture checkpoints."""

import json
import os
import sys

import numpy as np
import pytest

from common import BIG_VISION_FIXTURES, REPO, run_command
from presets_helpers import stage2_meta

import uvim_keras  # noqa: F401  (selects the default backend before keras)

FIX = BIG_VISION_FIXTURES


def run_cli(capsys, *argv):
    from uvim_keras.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, match, code=1):
    """One line on stderr, no traceback; exit status 1 for a failure at run
    time (missing file, unknown preset, ...), 2 for a usage error."""
    assert rc == code, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(((np.asarray(image) + 1) * 127.5).round().clip(0, 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A complete panoptic preset converted by the CLI from the fixture files."""
    from uvim_keras.cli import main

    tmp = tmp_path_factory.mktemp("cli")
    _, meta = stage2_meta()
    config = tmp / "config.json"
    config.write_text(json.dumps({"stage1": meta["stage1_panoptic"], "lm": meta["model"]}))
    out = tmp / "preset"
    rc = main(["convert", "--task", "panoptic", "--stage1", str(FIX / "stageI_panoptic_params.npz"),
               "--stage2", str(FIX / "stageII_params.npz"), "--config", str(config), "-o", str(out)])
    assert rc == 0
    return out, config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    io_file, _ = stage2_meta()
    tmp = tmp_path_factory.mktemp("images")
    return [_write_png(tmp / f"photo{i}.png", io_file["inputs/image"][i]) for i in range(2)]


def test_convert_writes_a_preset(converted):
    out, _ = converted
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "README.md",
            "uvim_preset.json"} <= set(os.listdir(out))
    info = json.loads((out / "uvim_preset.json").read_text())
    assert info["task"] == "panoptic" and info["kind"] == "uvim"
    assert info["converted_from"] == ["stageI_panoptic_params.npz", "stageII_params.npz"]


def test_predict_writes_pictures_and_arrays(converted, images, tmp_path, capsys):
    from uvim_keras import UViM
    from uvim_keras.data.images import prepare_image, read_image

    preset, _ = converted
    out = tmp_path / "pred"
    rc, stdout, err = run_cli(capsys, "predict", "--preset", preset, *images, "-o", out)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["photo0.npz", "photo0.png", "photo1.npz", "photo1.png"]
    assert stdout.count("->") == 2
    uvim = UViM.from_preset(str(preset))
    batch = np.stack([prepare_image(read_image(p), uvim.input_size) for p in images])
    expected = uvim.predict(batch, verbose=0)
    for i, stem in enumerate(("photo0", "photo1")):
        raw = np.load(out / f"{stem}.npz")
        assert raw["prediction"].shape == (1, 32, 32, 2) and raw["prediction"].dtype == np.int32
        np.testing.assert_array_equal(raw["prediction"][0], expected[i])
        assert raw["input"].shape == (32, 32, 3) and str(raw["task"]) == "panoptic"
        from PIL import Image

        with Image.open(out / f"{stem}.png") as picture:
            assert picture.width > 2 * 256  # input + overlay (+ legend), upscaled


def test_predict_samples_and_temperature(converted, images, tmp_path, capsys):
    preset, _ = converted
    out = tmp_path / "samples"
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, images[0], "-o", out,
                         "--samples", 3, "--temperature", 1.0, "--seed", 5)
    assert rc == 0, err
    raw = np.load(out / "photo0.npz")
    assert raw["prediction"].shape == (3, 32, 32, 2)
    assert float(raw["temperature"]) == 1.0 and int(raw["seed"]) == 5


@pytest.mark.slow
@pytest.mark.parametrize("task, stage1, extra", [
    ("depth", "stageI_depth", {"min_depth": 0.001, "max_depth": 10.0}),
    ("colorization", "stageI_color", {}),
])
def test_depth_and_colorization_pictures(task, stage1, extra, images, tmp_path, capsys):
    """Stage-I fixtures of other tasks fit the fixture LM (16 codes of 16 words)."""
    io_file = np.load(FIX / f"{stage1}_io.npz")
    meta = json.loads(str(io_file["meta/config_json"]))
    _, meta2 = stage2_meta()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"stage1": meta["model"], "lm": meta2["model"], "task": extra}))
    preset = tmp_path / "preset"
    rc, _, err = run_cli(capsys, "convert", "--task", task, "--stage1", FIX / f"{stage1}_params.npz",
                         "--stage2", FIX / "stageII_params.npz", "--config", config, "-o", preset)
    assert rc == 0, err
    out = tmp_path / "pred"
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, images[0], "-o", out)
    assert rc == 0, err
    raw = np.load(out / "photo0.npz")
    if task == "depth":
        assert raw["prediction"].shape == (1, 32, 32)
        assert 0.001 <= raw["prediction"].min() <= raw["prediction"].max() <= 10.0
    else:
        assert raw["prediction"].shape == (1, 32, 32, 3)
        grey = raw["input"].astype(int)
        assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1  # the model saw a grey image
    assert os.path.getsize(out / "photo0.png") > 0


def test_stage1_conversion_and_presets_listing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UVIM_KERAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s1"
    io_file = np.load(FIX / "stageI_panoptic_io.npz")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"stage1": json.loads(str(io_file["meta/config_json"]))["model"]}))
    rc, stdout, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1",
                              FIX / "stageI_panoptic_params.npz", "--config", config, "-o", out)
    assert rc == 0, err
    assert "stage-I panoptic preset" in stdout and "UViMStage1.from_preset" in stdout
    assert "task.json" not in os.listdir(out)
    # progress: a line per stage, and the checkpoint's arrays counted
    n = len(np.load(FIX / "stageI_panoptic_params.npz").files)
    lines = stdout.splitlines()
    stages = ["building the stage-I model",
              f"assigning the stage-I weights (stageI_panoptic_params.npz): {n} arrays",
              f"assigned {n} arrays", "saving the preset"]
    found = [next((i for i, line in enumerate(lines) if stage in line), None) for stage in stages]
    assert None not in found and found == sorted(found), stdout
    assert lines[-1].startswith("wrote stage-I panoptic preset"), stdout
    rc, stdout, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1",
                              FIX / "stageI_panoptic_params.npz", "--config", config, "-o", out,
                              "--overwrite", "--quiet")
    assert rc == 0, err
    assert stdout.splitlines() == [line for line in lines if line.startswith("wrote ")], stdout
    rc, stdout, err = run_cli(capsys, "presets")
    assert rc == 0
    for name in ("panoptic_coco", "depth_nyu_stage1", "colorization_imagenet"):
        assert name in stdout
    assert "PQ 43.1" in stdout and "RMSE 0.463" in stdout and "FID 16.99" in stdout
    assert "not downloaded" in stdout
    rc, stdout, _ = run_cli(capsys, "presets", "--json")
    rows = {r["name"]: r for r in json.loads(stdout)}
    assert rows["panoptic_coco"]["cached"] is None and rows["depth_nyu"]["task"] == "depth"


def test_convert_installs_a_named_preset_then_predict_uses_it(images, tmp_path, capsys,
                                                              monkeypatch):
    """The manual route the download error suggests (`convert --preset NAME`),
    then `predict --preset NAME` on the fixture-backed test preset."""
    from uvim_keras.presets import register_preset, unregister_preset
    from presets_helpers import fixture_spec

    class _NoServer:
        def url(self, path):
            return "http://127.0.0.1:9" + path  # nothing listens: no download may happen

    monkeypatch.setenv("UVIM_KERAS_CACHE", str(tmp_path / "cache"))
    spec = register_preset(fixture_spec("test_cli_manual", _NoServer()), overwrite=True)
    try:
        rc, stdout, err = run_cli(capsys, "convert", "--preset", spec.name,
                                  "--stage1", FIX / "stageI_panoptic_params.npz",
                                  "--stage2", FIX / "stageII_params.npz")
        assert rc == 0, err
        assert "from_preset('test_cli_manual')" in stdout
        assert (tmp_path / "cache" / "presets" / spec.name / "task.json").is_file()
        rc, stdout, _ = run_cli(capsys, "presets", "--json")
        assert {r["name"]: r for r in json.loads(stdout)}["test_cli_manual"]["cached"]
        out = tmp_path / "pred"
        rc, _, err = run_cli(capsys, "predict", "--preset", spec.name, *images, "-o", out)
        assert rc == 0, err
        assert sorted(os.listdir(out)) == ["photo0.npz", "photo0.png", "photo1.npz", "photo1.png"]
        assert str(np.load(out / "photo1.npz")["preset"]) == spec.name
    finally:
        unregister_preset(spec.name)


# -- errors: one line, exit status 1 (run time) or 2 (usage) ----------------------------
def test_predict_bad_arguments(converted, images, tmp_path, capsys):
    preset, _ = converted
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, "predict", "--preset", "no_such_preset", images[0], "-o", out)
    assert_one_line_error(rc, err, "unknown preset 'no_such_preset'")
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, tmp_path / "missing.jpg", "-o", out)
    assert_one_line_error(rc, err, "missing.jpg' does not exist")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, bad, "-o", out)
    assert_one_line_error(rc, err, "cannot read image")
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, images[0], "-o", out, "--samples", 0)
    assert_one_line_error(rc, err, "--samples 0", code=2)
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, images[0], "-o", out,
                         "--temperature", -1)
    assert_one_line_error(rc, err, "--temperature -1.0", code=2)
    rc, _, err = run_cli(capsys, "predict", "--preset", preset, images[0])
    assert_one_line_error(rc, err, "required: -o/--out", code=2)
    rc, _, err = run_cli(capsys, "predict", "--preset", "panoptic_coco_stage1", images[0], "-o", out)
    assert_one_line_error(rc, err, "stage-I preset")
    assert not out.exists()


def test_convert_bad_arguments(converted, tmp_path, capsys):
    _, config = converted
    p1, p2 = FIX / "stageI_panoptic_params.npz", FIX / "stageII_params.npz"
    out = tmp_path / "o"
    rc, _, err = run_cli(capsys, "convert", "--task", "depth", "--stage1", p1, "-o", out)
    assert_one_line_error(rc, err, "is a panoptic stage-I checkpoint")
    rc, _, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1", p2, "--stage2", p1,
                         "-o", out)
    assert_one_line_error(rc, err, "did you swap --stage1 and --stage2")
    rc, _, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1", tmp_path / "x.npz",
                         "-o", out)
    assert_one_line_error(rc, err, "x.npz' does not exist")
    rc, _, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1", p1, "--stage2", p2,
                         "-o", out)  # released (full-size) configs: shapes do not match
    assert_one_line_error(rc, err, "stageI_panoptic_params.npz does not match the stage-I config: "
                          "state/dictionary: checkpoint (16, 16), config (4096, 768)")
    rc, _, err = run_cli(capsys, "convert", "--preset", "nope", "--stage1", p1)
    assert_one_line_error(rc, err, "unknown preset 'nope'", code=2)  # not a named preset
    rc, _, err = run_cli(capsys, "convert", "--stage1", p1, "-o", out)
    assert_one_line_error(rc, err, "give --task", code=2)
    rc, _, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1", p1, "--stage2", p2,
                         "--config", config, "-o", FIX)
    assert_one_line_error(rc, err, "exists and is not empty")
    assert not out.exists()


def test_console_errors_have_no_traceback(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", UVIM_KERAS_CACHE=str(tmp_path / "c"))
    proc = run_command(
        [sys.executable, "-m", "uvim_keras", "predict", "--preset", "no_such_preset",
         tmp_path / "a.jpg", "-o", tmp_path / "o"], env=env, cwd=REPO, timeout=None, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"uvim-keras predict: error: image '{tmp_path / 'a.jpg'}' does not exist."]
