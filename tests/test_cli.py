"""The `uvim-keras` command line: --version, a --help that imports no
framework, exit statuses (1 at run time, 2 for usage errors) with one-line
messages, the bundled presets in the listings, numeric metrics in
`presets --json`, and `predict` writing outputs at each input's size (with
the bundled presets, offline)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common import REPO, run_command

import uvim_keras  # noqa: F401  (selects the default backend before keras)

from uvim_keras.presets.bundled import BUNDLED_DIR, BUNDLED_PRESETS

HEAVY = ("keras", "jax", "tensorflow", "torch", "keras_hub")


def run_cli(capsys, *argv):
    from uvim_keras.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage errors, --help, --version
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _subprocess_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("UVIM_KERAS_TRACEBACK",)}
    env.update(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               UVIM_KERAS_CACHE=str(tmp_path / "cache"))
    return env


def _recorded(name):
    return json.loads((BUNDLED_DIR / name / "uvim_preset.json").read_text())


# -- --version, --help ----------------------------------------------------------------
def test_version_prints_the_installed_version(capsys):
    from importlib import metadata

    rc, out, err = run_cli(capsys, "--version")
    assert rc == 0, err
    assert out.strip() == f"uvim-keras {metadata.version('uvim-keras')}"


def _console_script():
    script = os.path.join(os.path.dirname(sys.executable), "uvim-keras")
    if not os.path.isfile(script):
        pytest.skip("the uvim-keras console script is not installed beside this python")
    return script


def test_help_imports_no_framework(tmp_path):
    """`uvim-keras --help` (and each command's) parses arguments without
    importing Keras, JAX, TensorFlow or torch: it answers at once. Python's
    own import log (PYTHONPROFILEIMPORTTIME) shows what the command imported."""
    env = {**_subprocess_env(tmp_path), "PYTHONPROFILEIMPORTTIME": "1"}
    for argv in (["--help"], ["demo", "--help"], ["convert", "--help"], ["predict", "--help"],
                 ["presets", "--help"], ["--version"]):
        proc = run_command([_console_script(), *argv], env=env, cwd=tmp_path, timeout=120)
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "uvim_keras.cli" in imported, argv  # the log does list what was imported
        heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
        assert heavy == [], (argv, heavy[:5])
        if argv == ["predict", "--help"]:
            assert "usage: uvim-keras predict" in proc.stdout and "resized" in proc.stdout


def test_import_uvim_keras_registers_every_class():
    """Outside the command line, `import uvim_keras` alone registers the
    classes Keras needs to load a saved model or preset."""
    script = ("import uvim_keras, keras; print(all(keras.saving.get_registered_object("
              "f'uvim_keras>{n}') is not None for n in ('UViM', 'GuidingCodeLM', 'UViMStage1',"
              " 'PanopticTask', 'DecoderBlock', 'MlpBlock')))")
    proc = run_command([sys.executable, "-c", script], timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "True", proc.stderr[-2000:]


# -- exit statuses: 1 at run time, 2 for usage errors; one line, no traceback ------------
def test_runtime_error_exits_1_usage_error_exits_2_in_one_line(tmp_path):
    missing = tmp_path / "missing.png"
    cmd = [sys.executable, "-m", "uvim_keras", "predict", "--preset", "shapes_panoptic"]
    env = _subprocess_env(tmp_path)
    proc = run_command(cmd + [missing, "-o", tmp_path / "out"], env=env, cwd=tmp_path,
                       timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"uvim-keras predict: error: image '{missing}' does not exist."]
    proc = run_command(cmd + [missing], env=env, cwd=tmp_path, timeout=300,
                       check=False)  # no -o
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the following arguments are required: -o/--out" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unexpected_errors_are_one_line_with_their_type(capsys, monkeypatch):
    from uvim_keras.cli import presets as cli_presets

    def broken():
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli_presets, "preset_rows", broken)
    monkeypatch.delenv("UVIM_KERAS_TRACEBACK", raising=False)
    rc, out, err = run_cli(capsys, "presets")
    assert rc == 1
    assert err.splitlines() == ["uvim-keras presets: error: RuntimeError: boom second line"]
    for argv in (("--traceback", "presets"), ("presets", "--traceback")):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 1 and "Traceback (most recent call last)" in err, err
        assert err.splitlines()[-1] == "uvim-keras presets: error: RuntimeError: boom second line"
    monkeypatch.setenv("UVIM_KERAS_TRACEBACK", "1")
    rc, _, err = run_cli(capsys, "presets")
    assert rc == 1 and "Traceback" in err


def test_usage_errors_checked_by_a_command_exit_2(capsys, tmp_path):
    image = tmp_path / "x.png"
    rc, _, err = run_cli(capsys, "predict", "--preset", "shapes_panoptic", image, "-o",
                         tmp_path / "o", "--batch-size", 0)
    assert rc == 2 and err.splitlines() == [
        "uvim-keras predict: error: --batch-size 0: expected a positive number. "
        "(see uvim-keras predict --help)"]
    rc, _, err = run_cli(capsys, "convert", "--task", "panoptic", "--stage1", image, "--config",
                         tmp_path / "missing.json", "-o", tmp_path / "o")
    assert rc == 1 and len(err.splitlines()) == 1 and "cannot read --config" in err, err


def test_convert_progress_shows_stages_and_a_bar_on_a_terminal():
    import io

    from uvim_keras.cli.presets import _ConvertProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for err in (io.StringIO(), Terminal()):
        out = io.StringIO()
        progress = _ConvertProgress(out, err)
        progress("building the stage-I model")
        for done in range(4):
            progress("stage-I weights (a.npz)", done, 3)
        lines = out.getvalue().splitlines()
        assert [line.split("] ", 1)[1] for line in lines] == [
            "building the stage-I model", "assigning the stage-I weights (a.npz): 3 arrays",
            "assigned 3 arrays"]
        assert ("/3 [" in err.getvalue()) == err.isatty()  # the bar: on a terminal only


# -- the bundled presets in the listings -----------------------------------------------
def test_bundled_presets_are_listed_by_the_models_and_the_registry():
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import named_presets

    present = [n for n in BUNDLED_PRESETS if (BUNDLED_DIR / n / "config.json").is_file()]
    assert present == list(BUNDLED_PRESETS)  # the checkout ships all three
    assert set(present) <= set(UViM.presets) and set(present) <= set(UViMStage1.presets)
    assert UViM.presets["shapes_panoptic"] == _recorded("shapes_panoptic")["description"]
    assert not set(present) & set(named_presets(kind="stage1"))
    assert not set(present) & set(named_presets(bundled=False))


def test_unknown_preset_error_lists_the_bundled_presets():
    from uvim_keras import UViM
    from uvim_keras.presets import PresetError

    with pytest.raises(PresetError) as info:
        UViM.from_preset("no_such_preset")
    message = str(info.value)
    for name in ("panoptic_coco", *BUNDLED_PRESETS):
        assert name in message


def test_bundled_names_cannot_be_registered():
    import dataclasses

    from uvim_keras.presets import get_preset, register_preset

    spec = dataclasses.replace(get_preset("panoptic_coco"), name="shapes_panoptic")
    with pytest.raises(ValueError, match="bundled preset"):
        register_preset(spec)


def test_bundled_dir_is_the_installed_data_package_when_there_is_one(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from uvim_keras.presets import bundled

    installed = tmp_path / "site" / "uvim_keras" / "_weights"
    (installed / "shapes_depth").mkdir(parents=True)
    (installed / "shapes_depth" / "config.json").write_text("{}")
    spec = importlib.machinery.ModuleSpec(bundled.BUNDLED_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(installed)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == bundled.BUNDLED_PACKAGE else real(name, *a))
    assert bundled.find_bundled_dir() == installed
    spec.submodule_search_locations = [str(tmp_path / "empty")]  # no presets there
    assert bundled.find_bundled_dir() == REPO / "weights"


def test_presets_lists_bundled_presets_and_json_metrics_are_numbers(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("UVIM_KERAS_CACHE", str(tmp_path / "cache"))
    rc, out, err = run_cli(capsys, "presets")
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in BUNDLED_PRESETS:
        assert "bundled (offline)" in rows[name], out
    assert "PQ 43.1" in rows["panoptic_coco"] and "not downloaded" in rows["panoptic_coco"]
    rc, out, err = run_cli(capsys, "presets", "--json")
    assert rc == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["panoptic_coco"]["metrics"] == {"PQ": 43.1}
    assert rows["depth_nyu_stage1"]["metrics"] == {"RMSE": 0.155}
    assert rows["colorization_imagenet"]["metrics"] == {"FID": 16.99}
    assert rows["panoptic_coco"]["bundled"] is False and rows["panoptic_coco"]["cached"] is None
    for name in BUNDLED_PRESETS:
        row = rows[name]
        assert row["bundled"] is True and row["kind"] == "UViM" and row["sources"] == []
        assert row["path"] == str(BUNDLED_DIR / name)
        assert row["metrics"] == _recorded(name)["metrics"]
        assert all(isinstance(v, (int, float)) for v in row["metrics"].values())
    assert rows["shapes_depth"]["task"] == "depth"


# -- predict: outputs at each input's size ---------------------------------------------
def test_resize_output_nearest_and_bilinear():
    from uvim_keras.data.images import resize_output, resize_prediction, shown_input
    from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask, UViMTask

    labels = np.array([[1, 2], [3, 4]], "int32")
    np.testing.assert_array_equal(resize_output(labels, (4, 4), "nearest", (0, 1)),
                                  np.kron(labels, np.ones((2, 2), "int32")))
    small = resize_output(np.arange(64, dtype="int32").reshape(8, 8), (3, 5), "nearest", (0, 1))
    assert small.shape == (3, 5) and small.dtype == np.int32
    assert set(small.ravel()) <= set(range(64))
    # bilinear, half-pixel centres (as tf.image.resize): [0, 1] -> [0, .25, .75, 1]
    np.testing.assert_allclose(
        resize_output(np.array([[0.0, 1.0]], "float32"), (1, 4), "bilinear", (0, 1)),
        [[0.0, 0.25, 0.75, 1.0]])
    const = np.full((2, 8, 8, 3), 0.5, "float32")
    out = resize_output(const, (40, 70), "bilinear")
    assert out.shape == (2, 40, 70, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5)
    panoptic = np.stack([np.tile(labels, (4, 4))] * 2, -1)[None]  # (1, 8, 8, 2)
    assert resize_prediction(panoptic, (40, 70), PanopticTask()).shape == (1, 40, 70, 2)
    assert resize_prediction(np.ones((1, 8, 8), "float32"), (5, 3), DepthTask()).shape == (1, 5, 3)
    assert resize_prediction(const, (5, 3), ColorizationTask()).shape == (2, 5, 3, 3)
    with pytest.raises(ValueError, match="does not say how to resize"):
        resize_prediction(panoptic, (4, 4), UViMTask())
    grey = shown_input(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype="uint8"), True)
    assert grey.shape == (40, 70, 3) and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def _photo(path, size, task):
    """A synthetic scene of `task`, resized to `size` = (height, width)."""
    from PIL import Image

    from uvim_keras.data.synthetic import make_depth_scenes, make_panoptic_shapes

    make = {"panoptic": make_panoptic_shapes, "depth": make_depth_scenes}[task]
    image = make(1, size=64, seed=3)["image"][0]
    pixels = ((np.asarray(image) + 1) * 127.5).round().clip(0, 255).astype("uint8")
    Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task, method", [("panoptic", "nearest"), ("depth", "bilinear")])
def test_predict_writes_each_output_at_its_inputs_size(task, method, tmp_path, capsys):
    """A 40x70 and a 70x40 image through the bundled 64x64 model: the outputs
    are the model's, resized back to 40x70 and 70x40."""
    from PIL import Image

    from uvim_keras import UViM
    from uvim_keras.data.images import prepare_image, read_image, resize_output

    preset = f"shapes_{task}"
    wide = _photo(tmp_path / "wide.png", (40, 70), task)
    tall = _photo(tmp_path / "tall.png", (70, 40), task)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "predict", "--preset", preset, wide, tall, "-o", out)
    assert rc == 0, err
    assert "model input size 64x64" in stdout and "resized back" in stdout
    assert f"({method} interpolation)" in stdout
    uvim = UViM.from_preset(preset)
    for path, size in ((wide, (40, 70)), (tall, (70, 40))):
        raw = np.load(out / (path.stem + ".npz"))
        model_out = np.asarray(uvim.predict(prepare_image(read_image(path), (64, 64))[None],
                                            verbose=0))[0]
        prediction = raw["prediction"]
        if task == "panoptic":
            assert prediction.shape == (1, *size, 2) and prediction.dtype == np.int32
            np.testing.assert_array_equal(prediction[0], resize_output(model_out, size, "nearest"))
            assert len(np.unique(prediction[0, ..., 0])) > 1  # a real map, not one class
        else:
            assert prediction.shape == (1, *size) and prediction.dtype == np.float32
            np.testing.assert_allclose(
                prediction[0], resize_output(model_out, size, "bilinear", (-2, -1)), atol=1e-5)
        assert tuple(raw["original_size"]) == size and tuple(raw["model_size"]) == (64, 64)
        assert raw["input"].shape == (*size, 3)
        np.testing.assert_array_equal(raw["input"], read_image(path))
        with Image.open(out / (path.stem + ".png")) as picture:
            assert picture.height > size[0]


# -- quiet logs ---------------------------------------------------------------------
TF_NOISE = ("absl::InitializeLog", "cudart_stub", "cuInit", "cpu_feature_guard", "oneDNN")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax", reason="JAX backend")
def test_predict_under_jax_prints_no_tensorflow_log_lines(tmp_path):
    """keras-hub loads TensorFlow to read the preset; its C++ start-up lines
    stay off the terminal unless --verbose asks for them."""
    from PIL import Image

    pytest.importorskip("tensorflow")
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((30, 40, 3), 128, "uint8")).save(image)
    env = {**_subprocess_env(tmp_path)}
    env.pop("TF_CPP_MIN_LOG_LEVEL")

    def run(*extra):
        proc = run_command(
            [sys.executable, "-m", "uvim_keras", "predict", "--preset", "shapes_panoptic",
             image, "-o", tmp_path / "out", *extra], env=env, cwd=tmp_path, timeout=600)
        return [line for line in proc.stderr.splitlines() if any(n in line for n in TF_NOISE)]

    assert run() == []
    if not run("--verbose"):  # this TensorFlow logs nothing here anyway
        pytest.skip("TensorFlow printed no start-up lines on this machine")


# -- predict: inputs are never overwritten, outputs are written whole -------------------
def test_output_names_are_distinct_and_never_an_input(tmp_path):
    from uvim_keras.cli.presets import output_names

    for rel in ("a/x.png", "b/x.png", "c/x_1.png", "d/X.jpg", "out/y.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"image")
    images = [str(tmp_path / p) for p in ("a/x.png", "b/x.png", "c/x_1.png", "d/X.jpg",
                                          "out/y.png", "a/x.png")]
    names = output_names(images, str(tmp_path / "out"))
    stems = [stem for stem, _ in names]
    assert stems == ["x", "x_2", "x_1", "X_3", "y_1", "x_4"]
    assert len({s.casefold() for s in stems}) == len(stems)
    reasons = [reason for _, reason in names]
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] == f"{images[0]} has the same name"
    assert "would overwrite an input image" in reasons[4]
    assert not (tmp_path / "out" / "y_1.png").exists()  # names only: nothing is written


def test_write_atomically_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    import errno

    from uvim_keras.cli.presets import OutputError, write_atomically

    target = tmp_path / "result.npz"
    write_atomically(str(target), lambda f: f.write(b"first"))
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def half_then_full(f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write '.*result\.npz': No space left on device"):
        write_atomically(str(target), half_then_full)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["result.npz"]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(OutputError, match="I/O"):
        write_atomically(str(tmp_path / "new.png"), lambda f: f.write(b"png"))
    assert os.listdir(tmp_path) == ["result.npz"]


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_prepare_output_folder_creates_checks_and_removes(tmp_path):
    from uvim_keras.cli.presets import OutputError, prepare_output_folder, remove_created

    created = prepare_output_folder(str(tmp_path / "a" / "b"))
    assert [os.path.relpath(p, tmp_path) for p in created] == ["a", os.path.join("a", "b")]
    assert os.listdir(tmp_path / "a" / "b") == []  # the write check leaves nothing
    remove_created(created)
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("mine")
    for out, match in ((tmp_path / "file", "exists and is not a folder"),
                       (tmp_path / "file" / "sub", "is a file, not a folder")):
        with pytest.raises(OutputError, match=match):
            prepare_output_folder(str(out))
    assert os.listdir(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "mine"


# -- reading images: every mode to 8-bit RGB -------------------------------------------
def test_read_image_scales_16_bit_and_composites_alpha_on_white(tmp_path):
    from PIL import Image

    from uvim_keras.data.images import ImageReadError, read_image

    deep = np.array([[0, 257, 32896, 65535]], "uint16")
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 'I;16'
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[..., 0], [[0, 1, 128, 255]])
    Image.fromarray(deep).save(tmp_path / "keyed.png", transparency=257)  # tRNS colour key
    np.testing.assert_array_equal(read_image(tmp_path / "keyed.png")[..., 0], [[0, 255, 128, 255]])
    Image.fromarray(deep.astype("int32")).save(tmp_path / "int.tif")  # 'I' (32-bit)
    np.testing.assert_array_equal(read_image(tmp_path / "int.tif")[..., 1], [[0, 1, 128, 255]])
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], "float32")).save(tmp_path / "f.tif")  # 'F'
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 2], [[0, 128, 255]])
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [0, 0, 0, 128]]], "uint8")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"),
                                  [[[200, 100, 0], [255, 255, 255], [127, 127, 127]]])
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p_alpha.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[10, 20, 30], [40, 50, 60]]])
    np.testing.assert_array_equal(read_image(tmp_path / "p_alpha.png"),
                                  [[[255, 255, 255], [40, 50, 60]]])
    Image.fromarray(np.array([[[90, 0]]], "uint8")).save(tmp_path / "la.png")  # 'LA'
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), [[[255, 255, 255]]])
    Image.new("1", (2, 2), 1).save(tmp_path / "bits.png")
    assert (read_image(tmp_path / "bits.png") == 255).all()
    for image in ("deep.png", "rgba.png", "p.png", "la.png", "bits.png"):
        x = read_image(tmp_path / image)
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[-1] == 3
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"'.*empty\.png': the file is empty"):
        read_image(tmp_path / "empty.png")


# -- the top level: every failure is one line -------------------------------------------
def test_broken_pipe_on_stdout_is_quiet(tmp_path):
    """`uvim-keras presets | head -1`: the closed pipe ends the command
    without a traceback or an 'Exception ignored' line."""
    env = _subprocess_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "uvim_keras", "presets", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.close()  # before the command writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 1 and err == "", (proc.returncode, err)
