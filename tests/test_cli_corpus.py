"""A corpus of bad inputs through the `uvim-keras` command line.

Each case builds its input in a fresh `tmp_path` (images, preset folders
copied from the bundled `shapes_panoptic` and damaged, checkpoints, output
paths), runs the CLI and checks:

* the exit status: 1 for a failure at run time, 2 for a usage error, 0 for
  inputs that used to be mishandled and now work (16-bit, palette and RGBA
  images, colliding output names, output folder = input folder);
* stderr: exactly one line, matching the case's pattern, which names the
  file or argument; no traceback (for successes: nothing at all);
* nothing the user owns changed: every file, folder and link under
  `tmp_path` is hashed before and after; only the expected output folder
  (or a case's expected new files) may differ, and a failure creates
  nothing, not even the output folder;
* a failure that needs no model (bad arguments, images, output paths, preset
  files) comes before the model is loaded.

Predict cases run in-process with the bundled preset loaded once (the
folder checks still run on the bundled folder); cases marked `real_load`
load a damaged preset for real, and two cases run the console command in a
subprocess (a write past a file-size limit: a real full-disk-like OSError;
an image above Pillow's decompression-bomb warning limit: no warning line).
"""

import builtins
import dataclasses
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from typing import Callable, Optional

import numpy as np
import pytest

from common import BIG_VISION_FIXTURES, REPO

import uvim_keras  # noqa: F401  (selects the default backend before keras)

from uvim_keras.presets.bundled import BUNDLED_DIR

PRESET = "shapes_panoptic"
FIX = BIG_VISION_FIXTURES


# -- building inputs -------------------------------------------------------------------
def write_png(path, pixels=None, size=(20, 30), **save):
    """An image file of `pixels` (uint8 (H, W, 3) RGB, (H, W, 4) RGBA,
    (H, W, 2) LA, (H, W) L; uint16 (H, W): a 16-bit 'I;16' PNG)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        pixels = rng.integers(0, 256, (*size, 3), dtype="uint8")
    Image.fromarray(pixels).save(path, **save)
    return path


def png_header_only(path, width, height):
    """A PNG of `width` x `height` whose pixel data is a few bytes: Pillow
    checks the size at open (before decoding)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def preset_copy(tmp, mutate=None, record=True):
    """The bundled preset copied to tmp/preset, damaged by `mutate(folder)`;
    without `record`, its uvim_preset.json (size and sha256 record) removed,
    as in a folder saved by keras-hub itself."""
    folder = tmp / "preset"
    shutil.copytree(BUNDLED_DIR / PRESET, folder)
    if not record:
        (folder / "uvim_preset.json").unlink()
    if mutate is not None:
        mutate(folder)
    return folder


def edit_json(name, change):
    def mutate(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data, indent=4))
    return mutate


def replace_file(name, content):
    def mutate(folder):
        (folder / name).unlink()
        (folder / name).write_bytes(content)
    return mutate


def remove_file(name):
    return lambda folder: (folder / name).unlink()


def truncate_file(name):
    return lambda folder: truncate(folder / name)


def h5_file(name, datasets):
    def mutate(folder):
        import h5py

        (folder / name).unlink()
        with h5py.File(folder / name, "w") as f:
            for key, value in datasets.items():
                f[key] = value
    return mutate


def dense(data):
    data.clear()
    data.update({"module": "keras.layers", "class_name": "Dense", "config": {"units": 3},
                 "registered_name": None})


def os_system(data):
    data["config"]["lm"] = {"module": "os", "class_name": "system",
                            "config": {"command": "touch HACKED"}, "registered_name": None}


def predict(tmp, *images, preset=PRESET, out="out", extra=()):
    images = images or (write_png(tmp / "photo.png"),)
    return ["predict", "--preset", preset, *images, "-o", tmp / out, *extra]


def predict_with_preset(mutate, record=True):
    return lambda tmp: predict(tmp, preset=preset_copy(tmp, mutate, record))


def _stage1_config(tmp):
    io_file = np.load(FIX / "stageI_panoptic_io.npz")
    path = tmp / "config.json"
    path.write_text(json.dumps({"stage1": json.loads(str(io_file["meta/config_json"]))["model"]}))
    return path


def convert(tmp, stage1, config=None, out="converted", extra=()):
    if not (FIX / "stageI_panoptic_params.npz").is_file():
        pytest.skip(f"no big_vision fixtures in {FIX}")
    config = _stage1_config(tmp) if config is None else config
    return ["convert", "--task", "panoptic", "--stage1", stage1, "--config", config,
            "-o", out if os.path.isabs(str(out)) else tmp / out, "--quiet", *extra]


def checkpoint(tmp, name, change=None):
    src = np.load(FIX / "stageI_panoptic_params.npz")
    arrays = {k: src[k] for k in src.files}
    if change is not None:
        change(arrays)
    np.savez(tmp / name, **arrays)
    return tmp / name


def config_file(tmp, text):
    path = tmp / "bad_config.json"
    path.write_text(text)
    return path


# -- checks of outputs -----------------------------------------------------------------
def _inputs_seen(tmp, out="out"):
    return {p.stem: np.load(p)["input"] for p in sorted((tmp / out).glob("*.npz"))}


def composited(rgba):
    rgba = rgba.astype("float32")
    a = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * a + 255.0 * (1 - a)).astype("uint8")


# -- the cases ---------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    name: str
    build: Callable  # tmp -> argv
    code: int
    pattern: Optional[str] = None  # the one stderr line (a regex, searched); None: no stderr
    out: Optional[str] = "out"  # the output folder (relative to tmp) the command may write
    new_files: tuple = ()  # other paths (relative to tmp) a successful run may create
    check: Optional[Callable] = None  # (tmp, stdout) -> None: more assertions
    setup: Optional[Callable] = None  # (monkeypatch, tmp) -> None
    real_load: bool = False  # load the preset for real (a damaged one that only loading detects)
    model: Optional[bool] = None  # needs the (bundled) model: default, when code is 0
    writes: Optional[bool] = None  # may write in `out`: default, when code is 0
    console: Optional[dict] = None  # run the console command: {"fsize": bytes limit}
    xfail: Optional[str] = None
    slow: bool = False  # longer than ~5 s: marked `slow`, out of the fast tier


def _bad_then_good(tmp):
    good = write_png(tmp / "good.png")
    bad = tmp / "bad.png"
    bad.write_text("not a png")
    return predict(tmp, good, bad)


def _sixteen_bit(tmp):
    a = (np.arange(20 * 30, dtype="uint16").reshape(20, 30) * 109)  # up to 65291
    return predict(tmp, write_png(tmp / "deep.png", a))


def _check_sixteen_bit(tmp, stdout):
    a = (np.arange(20 * 30, dtype="float64").reshape(20, 30) * 109)
    seen = _inputs_seen(tmp)["deep"]
    np.testing.assert_array_equal(seen[..., 0], np.round(a * 255 / 65535).astype("uint8"))
    assert seen.max() == 254 and seen.min() == 0 and len(np.unique(seen)) > 200  # not clipped


def _palette(tmp):
    from PIL import Image

    image = Image.new("P", (30, 20))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 15, 20))  # left half blue, right half transparent (entry 0)
    image.info["transparency"] = 0
    (tmp / "pal.png").parent.mkdir(parents=True, exist_ok=True)
    image.save(tmp / "pal.png", transparency=0)
    return predict(tmp, tmp / "pal.png")


def _check_palette(tmp, stdout):
    seen = _inputs_seen(tmp)["pal"]
    assert (seen[:, :15] == [0, 0, 255]).all() and (seen[:, 15:] == 255).all()


def _rgba_pixels():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (20, 30, 4), dtype="uint8")


def _rgba(tmp):
    return predict(tmp, write_png(tmp / "alpha.png", _rgba_pixels()))


def _check_rgba(tmp, stdout):
    np.testing.assert_array_equal(_inputs_seen(tmp)["alpha"], composited(_rgba_pixels()))


def _grey_alpha(tmp):
    la = np.stack([np.full((20, 30), 40, "uint8"), np.full((20, 30), 0, "uint8")], -1)
    return predict(tmp, write_png(tmp / "la.png", la),
                   write_png(tmp / "grey.png", np.full((20, 30), 77, "uint8")))


def _check_grey_alpha(tmp, stdout):
    seen = _inputs_seen(tmp)
    assert (seen["la"] == 255).all()  # fully transparent: white
    assert (seen["grey"] == 77).all()


def _colliding(tmp):
    colours = {"a/x.png": 10, "b/x.png": 120, "c/x_1.png": 240}
    return predict(tmp, *(write_png(tmp / p, np.full((20, 30, 3), v, "uint8"))
                          for p, v in colours.items()))


def _check_colliding(tmp, stdout):
    seen = _inputs_seen(tmp)
    assert sorted(os.listdir(tmp / "out")) == ["x.npz", "x.png", "x_1.npz", "x_1.png",
                                               "x_2.npz", "x_2.png"]
    assert {k: int(v.mean()) for k, v in seen.items()} == {"x": 10, "x_1": 240, "x_2": 120}
    lines = [line for line in stdout.splitlines() if "->" in line]
    assert len(lines) == 3 and sum("renamed" in line for line in lines) == 1, stdout
    assert re.search(r"b/x\.png \(20x30\) -> .*x_2\.png, .*x_2\.npz \(renamed: .*a/x\.png has "
                     r"the same name\)", stdout), stdout


def _case_colliding(tmp):
    return predict(tmp, write_png(tmp / "a" / "Photo.png"), write_png(tmp / "b" / "photo.png"))


def _check_case_colliding(tmp, stdout):
    assert sorted(os.listdir(tmp / "out")) == ["Photo.npz", "Photo.png", "photo_1.npz",
                                               "photo_1.png"]


def _twice(tmp):
    image = write_png(tmp / "same.png")
    return predict(tmp, image, image)


def _check_twice(tmp, stdout):
    assert sorted(os.listdir(tmp / "out")) == ["same.npz", "same.png", "same_1.npz", "same_1.png"]


def _into_input_folder(tmp):
    image = write_png(tmp / "photos" / "photo.png")
    return predict(tmp, image, out="photos")


def _check_into_input_folder(tmp, stdout):
    assert sorted(os.listdir(tmp / "photos")) == ["photo.png", "photo_1.npz", "photo_1.png"]
    assert "would overwrite an input image" in stdout, stdout


def _hard_link(tmp):
    image = write_png(tmp / "in" / "x.png")
    (tmp / "out").mkdir()
    os.link(image, tmp / "out" / "x.png")  # the output name is the input file itself
    return predict(tmp, image)


def _check_hard_link(tmp, stdout):
    assert sorted(os.listdir(tmp / "out")) == ["x.png", "x_1.npz", "x_1.png"]
    assert (tmp / "out" / "x.png").read_bytes() == (tmp / "in" / "x.png").read_bytes()


def _output_is_a_file(tmp):
    (tmp / "out.txt").write_text("my notes")
    return predict(tmp, out="out.txt")


def _output_under_a_file(tmp):
    (tmp / "notes.txt").write_text("my notes")
    return predict(tmp, out="notes.txt/out")


def _output_broken_link(tmp):
    os.symlink(tmp / "nowhere", tmp / "out")
    return predict(tmp)


def _output_unwritable(monkeypatch, tmp):
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir) == str(tmp / "out"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _full_disk(monkeypatch, tmp):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def _full_disk_build(tmp):
    argv = predict(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "photo.npz").write_bytes(b"an earlier run's complete output")
    return argv


def _check_full_disk(tmp, stdout):
    assert os.listdir(tmp / "out") == ["photo.npz"]  # no temporary file left
    assert (tmp / "out" / "photo.npz").read_bytes() == b"an earlier run's complete output"


def _check_file_too_large(tmp, stdout):
    names = sorted(os.listdir(tmp / "out"))
    assert not [n for n in names if n.startswith(".")], names  # no temporary file left
    for name in names:  # what was written is complete
        if name.endswith(".npz"):
            assert np.load(tmp / "out" / name)["prediction"].shape == (1, 20, 30, 2)
        else:
            from PIL import Image

            with Image.open(tmp / "out" / name) as picture:
                picture.load()


def _unreadable(monkeypatch, tmp):
    real = builtins.open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == str(tmp / "secret.png"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def _corrupt_png(tmp):
    path = write_png(tmp / "corrupt.png", size=(40, 50))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start:start + 40] = bytes(40)
    path.write_bytes(bytes(data))
    return predict(tmp, path)


def _fifo(tmp):
    os.mkfifo(tmp / "pipe.png")
    return predict(tmp, tmp / "pipe.png")


def _broken_image_link(tmp):
    os.symlink(tmp / "gone.png", tmp / "link.png")
    return predict(tmp, tmp / "link.png")


def _stage1_folder(tmp):
    (tmp / "ckpts").mkdir()
    return convert(tmp, tmp / "ckpts")


def _object_array(arrays):
    arrays["state/dictionary"] = np.empty((16, 16), object)
    arrays["state/dictionary"][:] = 0.5


def _non_finite(arrays):
    key = "params/ctx_enc_embedding/kernel"
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan


def _overwrite_holding_input(tmp):
    (tmp / "ckpts").mkdir()
    stage1 = shutil.copy(FIX / "stageI_panoptic_params.npz", tmp / "ckpts")
    return convert(tmp, stage1, out="ckpts", extra=["--overwrite"])


def _overwrite_user_folder(tmp):
    (tmp / "documents").mkdir()
    (tmp / "documents" / "thesis.txt").write_text("years of work")
    return convert(tmp, FIX / "stageI_panoptic_params.npz", out="documents",
                   extra=["--overwrite"])


IMG = r"image '[^']*{}'"
PRESET_FILE = r"preset (folder )?\S*preset\b.*{}"
USAGE = r" \(see uvim-keras {} --help\)$"

CASES = [
    # -- images ----------------------------------------------------------------------
    Case("image missing", lambda t: predict(t, t / "missing.png"), 1,
         IMG.format("missing.png") + " does not exist"),
    Case("image empty file", lambda t: predict(t, (t / "empty.png").touch() or t / "empty.png"),
         1, IMG.format("empty.png") + r": the file is empty \(0 bytes\)"),
    Case("image truncated", lambda t: predict(t, truncate(write_png(t / "cut.png"))), 1,
         IMG.format("cut.png") + ": image file is truncated"),
    Case("image corrupt pixel data", _corrupt_png, 1, IMG.format("corrupt.png") + ": .+"),
    Case("image is text named .png", lambda t: predict(
        t, (t / "notes.png").write_text("hello") and t / "notes.png"), 1,
        IMG.format("notes.png") + ": not an image file Pillow can read"),
    Case("image is a pickle", lambda t: predict(
        t, (t / "obj.png").write_bytes(pickle.dumps({"a": 1})) and t / "obj.png"), 1,
        IMG.format("obj.png") + ": not an image file Pillow can read"),
    Case("image 20000x20000 (decompression bomb)", lambda t: predict(
        t, png_header_only(t / "huge.png", 20000, 20000)), 1,
        IMG.format("huge.png") + r" is too large: 400000000 pixels, above the limit of "
        r"\d+ pixels \(Pillow's decompression-bomb guard"),
    Case("image 10000x10000 (bomb warning), console", lambda t: predict(
        t, png_header_only(t / "big.png", 10000, 10000)), 1,
        IMG.format("big.png") + r" is too large: 100000000 pixels, above the limit of "
        r"89478485 pixels", console={}),
    Case("image is a folder", lambda t: predict(t, (t / "dir.png").mkdir() or t / "dir.png"), 1,
         IMG.format("dir.png") + " is a folder, not an image file"),
    Case("image is a fifo", _fifo, 1, IMG.format("pipe.png") + " is not a regular file"),
    Case("image is a broken link", _broken_image_link, 1,
         IMG.format("link.png") + " is a broken symbolic link"),
    Case("image unreadable (permission denied)", lambda t: predict(t, write_png(t / "secret.png")),
         1, IMG.format("secret.png") + ": Permission denied", setup=_unreadable),
    Case("image path through a file", lambda t: predict(
        t, write_png(t / "a.png") / "b.png"), 1, IMG.format("a.png/b.png") + " does not exist"),
    Case("image name too long", lambda t: predict(t, t / ("x" * 300 + ".png")), 1,
         IMG.format("xxxx.png") + ": File name too long"),
    Case("image path with a NUL byte", lambda t: predict(t, str(t / "a.png") + "\0"), 1,
         r"image '[^']*a\.png\\x00' is not a valid path"),
    Case("a bad image after a good one", _bad_then_good, 1,
         IMG.format("bad.png") + ": not an image file Pillow can read"),
    Case("image 16-bit greyscale (I;16)", _sixteen_bit, 0, check=_check_sixteen_bit),
    Case("image palette with transparency", _palette, 0, check=_check_palette),
    Case("image RGBA", _rgba, 0, check=_check_rgba),
    Case("image LA and L", _grey_alpha, 0, check=_check_grey_alpha),
    # -- outputs -----------------------------------------------------------------------
    Case("output names collide", _colliding, 0, check=_check_colliding),
    Case("output names differ in case only", _case_colliding, 0, check=_check_case_colliding),
    Case("the same image twice", _twice, 0, check=_check_twice),
    Case("output folder = input folder", _into_input_folder, 0, out=None,
         new_files=("photos/photo_1.png", "photos/photo_1.npz"), check=_check_into_input_folder),
    Case("output file is a hard link to the input", _hard_link, 0,
         check=_check_hard_link),
    Case("output is a file", _output_is_a_file, 1,
         r"-o '[^']*out\.txt' exists and is not a folder", out=None),
    Case("output under a file", _output_under_a_file, 1,
         r"-o '[^']*notes\.txt/out': '[^']*notes\.txt' is a file, not a folder", out=None),
    Case("output is a broken link", _output_broken_link, 1,
         r"-o '[^']*out' is a broken symbolic link", out=None),
    Case("output folder not writable", predict, 1,
         r"-o '[^']*out': cannot write files in this folder \(Permission denied\)",
         setup=_output_unwritable),
    Case("output folder cannot be made", lambda t: predict(t, out="/proc/uvim-keras-corpus/out"),
         1, r"-o '/proc/uvim-keras-corpus/out': cannot create the folder "
         r"'/proc/uvim-keras-corpus' \(No such file or directory\)"),
    Case("disk full while writing", _full_disk_build, 1,
         r"cannot write '[^']*out/photo\.npz': No space left on device \(no image's outputs "
         r"written before\)",
         setup=_full_disk, check=_check_full_disk, model=True),
    Case("file size limit while writing, console", predict, 1,
         r"cannot write '[^']*out/photo\.png': File too large \(no image's outputs written "
         r"before; \S*out/photo\.npz was written\)", console={"fsize": 6000},
         check=_check_file_too_large, writes=True, slow=True),  # loads the model in a process
    # -- arguments (usage errors) -----------------------------------------------------
    Case("--batch-size 0", lambda t: predict(t, extra=["--batch-size", 0]), 2,
         r"--batch-size 0: expected a positive number\." + USAGE.format("predict")),
    Case("--batch-size -3", lambda t: predict(t, extra=["--batch-size", -3]), 2,
         r"--batch-size -3: expected a positive number"),
    Case("--samples 0", lambda t: predict(t, extra=["--samples", 0]), 2,
         r"--samples 0: expected a positive number"),
    Case("--samples abc", lambda t: predict(t, extra=["--samples", "abc"]), 2,
         r"argument --samples: invalid int value: 'abc'" + USAGE.format("predict")),
    Case("--temperature -1", lambda t: predict(t, extra=["--temperature", -1]), 2,
         r"--temperature -1\.0: expected a finite value >= 0"),
    Case("--temperature nan", lambda t: predict(t, extra=["--temperature", "nan"]), 2,
         r"--temperature nan: expected a finite value >= 0"),
    Case("--temperature inf", lambda t: predict(t, extra=["--temperature", "inf"]), 2,
         r"--temperature inf: expected a finite value >= 0"),
    Case("--seed -1", lambda t: predict(t, extra=["--seed", -1]), 2,
         r"--seed -1: expected a number >= 0"),
    Case("no IMAGE", lambda t: ["predict", "--preset", PRESET, "-o", t / "out"], 2,
         r"the following arguments are required: IMAGE"),
    Case("IMAGE ''", lambda t: predict(t, ""), 2, r"IMAGE '': an empty path"),
    Case("-o ''", lambda t: ["predict", "--preset", PRESET, write_png(t / "p.png"), "-o", ""], 2,
         r"-o '': an empty path", out=None),
    Case("no -o", lambda t: ["predict", "--preset", PRESET, write_png(t / "p.png")], 2,
         r"the following arguments are required: -o/--out"),
    # -- presets ---------------------------------------------------------------------
    Case("--preset unknown name", lambda t: predict(t, preset="no_such_preset"), 1,
         r"unknown preset 'no_such_preset'", real_load=True),
    Case("--preset ''", lambda t: predict(t, preset=""), 2, r"--preset '': expected a preset"),
    Case("--preset a file", lambda t: predict(t, preset=write_png(t / "model.png")), 1,
         r"\S*model\.png is a file, not a preset folder", real_load=True),
    Case("--preset a stage-I named preset", lambda t: predict(t, preset="panoptic_coco_stage1"), 1,
         r"'panoptic_coco_stage1' is a stage-I preset", real_load=True),
    Case("--preset an empty folder", lambda t: predict(
        t, preset=(t / "empty").mkdir() or t / "empty"), 1,
        r"\S*empty is a folder but not a preset \(no config\.json\)"),
    Case("preset without config.json", predict_with_preset(remove_file("config.json")), 1,
         r"\S*preset is a folder but not a preset \(no config\.json\)"),
    Case("preset without task.json", predict_with_preset(remove_file("task.json")), 1,
         PRESET_FILE.format(r"has no task\.json: it is a stage-I preset")),
    Case("preset without model.weights.h5", predict_with_preset(remove_file("model.weights.h5")),
         1, PRESET_FILE.format(r"has no model\.weights\.h5")),
    Case("preset without task.weights.h5", predict_with_preset(remove_file("task.weights.h5")),
         1, PRESET_FILE.format(r"has no task\.weights\.h5")),
    Case("preset truncated model.weights.h5", predict_with_preset(
        truncate_file("model.weights.h5")), 1,
        PRESET_FILE.format(r"model\.weights\.h5 is not a readable weights file \(truncated: "
                           r"\d+ of \d+ bytes\)")),
    Case("preset truncated task.weights.h5", predict_with_preset(truncate_file("task.weights.h5")),
         1, PRESET_FILE.format(r"task\.weights\.h5 is not a readable weights file \(truncated")),
    Case("preset text as task.weights.h5", predict_with_preset(
        replace_file("task.weights.h5", b"not hdf5")), 1,
        PRESET_FILE.format(r"task\.weights\.h5 is not a readable weights file \(not an HDF5")),
    Case("preset empty model.weights.h5", predict_with_preset(
        replace_file("model.weights.h5", b"")), 1,
        PRESET_FILE.format(r"model\.weights\.h5 is empty \(0 bytes\)")),
    Case("preset HDF5 without weights", predict_with_preset(h5_file("task.weights.h5", {})), 1,
         PRESET_FILE.format(r"task\.weights\.h5 holds no weights")),
    Case("preset invalid JSON config.json", predict_with_preset(
        replace_file("config.json", b"{not json")), 1,
        PRESET_FILE.format(r"config\.json is not valid JSON \(")),
    Case("preset invalid JSON task.json", predict_with_preset(
        replace_file("task.json", b'{"class_name": ')), 1,
        PRESET_FILE.format(r"task\.json is not valid JSON \(")),
    Case("preset binary task.json", predict_with_preset(
        replace_file("task.json", bytes(range(256)))), 1,
        PRESET_FILE.format(r"task\.json is not valid JSON \(not UTF-8 text\)")),
    Case("preset invalid JSON uvim_preset.json", predict_with_preset(
        replace_file("uvim_preset.json", b"[1, 2")), 1,
        r"uvim_preset\.json.*(not valid JSON|Expecting)"),
    Case("preset config.json a JSON list", predict_with_preset(
        replace_file("config.json", b"[1, 2]")), 1,
        PRESET_FILE.format(r"config\.json holds a JSON list, not an object")),
    Case("preset weights_layout not a number", predict_with_preset(
        edit_json("uvim_preset.json", lambda d: d.update(weights_layout="3x"))), 1,
        r"uvim_preset\.json.*weights_layout '3x'"),
    Case("preset from a newer uvim-keras", predict_with_preset(
        edit_json("uvim_preset.json", lambda d: d.update(weights_layout=99))), 1,
        r"\S*preset.* weights_layout 99, written by a newer uvim-keras", real_load=True),
    Case("preset config.json unknown class", predict_with_preset(edit_json(
        "config.json", lambda d: d.update(registered_name="uvim_keras>NoSuchBackbone"))), 1,
        PRESET_FILE.format(r"config\.json names an unknown class")),
    Case("preset task.json unknown nested class", predict_with_preset(edit_json(
        "task.json", lambda d: d["config"]["lm"].update(class_name="Nope",
                                                        registered_name="uvim_keras>Nope"))), 1,
        PRESET_FILE.format(r"task\.json names an unknown class 'Nope'.*at config\.lm")),
    Case("preset task.json module os", predict_with_preset(edit_json("task.json", os_system)), 1,
         PRESET_FILE.format(r"task\.json names class 'system' of module 'os' \(at config\.lm\)")),
    Case("preset config.json module os", predict_with_preset(edit_json(
        "config.json", lambda d: d.update(module="os", class_name="system",
                                          registered_name="os>system"))), 1,
        PRESET_FILE.format(r"config\.json names class 'system' of module 'os'")),
    Case("preset task is a Dense layer", predict_with_preset(edit_json("task.json", dense)), 1,
         PRESET_FILE.format(r"task\.json describes keras\.\S*Dense, not a UViM task")),
    Case("preset backbone is a Dense layer", predict_with_preset(edit_json("config.json", dense)),
         1, PRESET_FILE.format(r"config\.json describes keras\.\S*Dense, not a UViM stage-I")),
    Case("preset task is the backbone", predict_with_preset(edit_json(
        "task.json", lambda d: d.update(registered_name="uvim_keras>UViMStage1Backbone"))), 1,
        PRESET_FILE.format(r"task\.json describes \S*UViMStage1Backbone, not a UViM task")),
    Case("preset task.json without config", predict_with_preset(edit_json(
        "task.json", lambda d: d.pop("config"))), 1,
        PRESET_FILE.format(r"task\.json is not a saved Keras object")),
    Case("preset LM config with an unknown argument (loads for real)", predict_with_preset(
        edit_json("task.json", lambda d: d["config"]["lm"]["config"].update(bogus=1)),
        record=False), 1,
        r"cannot load preset '\S*preset': Unrecognized keyword arguments passed to "
        r"GuidingCodeLM: \{'bogus': 1\}", real_load=True),
    Case("preset task.weights.h5 of another model (loads for real)", predict_with_preset(
        h5_file("task.weights.h5", {"layers/foo/vars/0": np.zeros(3)}), record=False), 1,
        r"cannot load preset '\S*preset': .+", real_load=True),
    # -- convert ---------------------------------------------------------------------
    Case("convert --stage1 missing", lambda t: convert(t, t / "nope.npz"), 1,
         r"--stage1 '[^']*nope\.npz' does not exist", out="converted"),
    Case("convert --stage1 text", lambda t: convert(
        t, (t / "a.npz").write_text("hi") and t / "a.npz"), 1,
        r"'[^']*a\.npz' is not a readable \.npz file", out="converted"),
    Case("convert --stage1 empty", lambda t: convert(t, (t / "e.npz").touch() or t / "e.npz"), 1,
         r"--stage1 '[^']*e\.npz' is empty \(0 bytes\)", out="converted"),
    Case("convert --stage1 a folder", _stage1_folder, 1,
         r"--stage1 '[^']*ckpts' is a folder, not a \.npz checkpoint", out="converted"),
    Case("convert --stage1 pickled object", lambda t: convert(
        t, (t / "p.npz").write_bytes(pickle.dumps({"x": 1})) and t / "p.npz"), 1,
        r"'[^']*p\.npz' is not a readable \.npz file", out="converted"),
    Case("convert --stage1 object array", lambda t: convert(
        t, checkpoint(t, "obj.npz", _object_array)), 1,
        r"obj\.npz.*Object arrays cannot be loaded", out="converted"),
    Case("convert --stage1 wrong keys", lambda t: convert(
        t, (np.savez(t / "w.npz", foo=np.zeros(3)) or t / "w.npz")), 1,
        r"w\.npz is not a UViM stage-I checkpoint", out="converted"),
    Case("convert --stage1 truncated", lambda t: convert(
        t, truncate(shutil.copy(FIX / "stageI_panoptic_params.npz", t / "t.npz") and t / "t.npz")),
        1, r"'[^']*t\.npz' is not a readable \.npz file", out="converted"),
    Case("convert --stage1 with NaN", lambda t: convert(t, checkpoint(t, "nan.npz", _non_finite)),
         1, r"nan\.npz.*non-finite", out="converted"),
    Case("convert --config invalid JSON", lambda t: convert(
        t, FIX / "stageI_panoptic_params.npz", config_file(t, "{oops")), 1,
        r"--config '[^']*bad_config\.json' is not valid JSON", out="converted"),
    Case("convert --config stage1 not an object", lambda t: convert(
        t, FIX / "stageI_panoptic_params.npz", config_file(t, '{"stage1": "big"}')), 1,
        r"--config '[^']*bad_config\.json': 'stage1' must be a JSON object", out="converted"),
    Case("convert --config temperature a string", lambda t: convert(
        t, FIX / "stageI_panoptic_params.npz", config_file(t, '{"stage1": {}, "temperature": '
                                                             '"hot"}')), 1,
        r"--config '[^']*bad_config\.json': 'temperature' must be a number", out="converted"),
    Case("convert -o is a file", lambda t: convert(
        t, FIX / "stageI_panoptic_params.npz",
        out=(t / "f.txt").write_text("mine") and t / "f.txt"), 1,
        r"-o '[^']*f\.txt' exists and is not a folder", out=None),
    Case("convert -o under a file", lambda t: convert(
        t, FIX / "stageI_panoptic_params.npz",
        out=(t / "f.txt").write_text("mine") and t / "f.txt" / "x"), 1,
        r"-o '[^']*f\.txt/x': '[^']*f\.txt' is a file, not a folder", out=None),
    Case("convert --overwrite a folder holding --stage1", _overwrite_holding_input, 1,
         r"-o '[^']*ckpts' holds --stage1 '[^']*stageI_panoptic_params\.npz': --overwrite would "
         r"delete it", out=None),
    Case("convert --overwrite a folder of user files", _overwrite_user_folder, 1,
         r"documents is not a uvim-keras preset folder", out=None),
    Case("convert --task unknown", lambda t: ["convert", "--task", "segm", "--stage1", "a.npz"], 2,
         r"argument --task: invalid choice: 'segm'", out=None),
    Case("convert --preset unknown", lambda t: ["convert", "--preset", "nope", "--stage1",
                                                FIX / "stageI_panoptic_params.npz"], 2,
         r"unknown preset 'nope'", out=None),
]


# -- running them ------------------------------------------------------------------------
def snapshot(root):
    """{relative path: what it is}: a file's sha256, a link's target, a folder."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("folder",)
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", hashlib.sha256(open(path, "rb").read()).hexdigest(),
                              stat.S_IMODE(st.st_mode))
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def run_cli(capsys, *argv):
    from uvim_keras.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_console(tmp, argv, fsize=None):
    """The console command in a subprocess (`fsize`: a limit on the size of
    the files it writes, RLIMIT_FSIZE: a write past it fails with EFBIG, as
    a full disk fails with ENOSPC; set in the child itself, as a preexec_fn
    would fork this multithreaded process)."""
    limit = "" if fsize is None else (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); ")
    script = (f"{limit}import runpy, sys; sys.argv[0] = 'uvim-keras'; "
              "runpy.run_module('uvim_keras', run_name='__main__', alter_sys=True)")
    env = {k: v for k, v in os.environ.items() if k != "UVIM_KERAS_TRACEBACK"}
    env.update(KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"), TF_CPP_MIN_LOG_LEVEL="3",
               UVIM_KERAS_CACHE=str(tmp.parent / (tmp.name + "_cache")),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def bundled_uvim():
    from uvim_keras import UViM

    return UViM.from_preset(PRESET)


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        if case.slow:
            marks.append(pytest.mark.slow)
        yield pytest.param(case, id=case.name, marks=marks)


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", list(_params()))
def test_cli_corpus(case, tmp_path, capsys, monkeypatch, request):
    from uvim_keras import UViM

    monkeypatch.setenv("UVIM_KERAS_CACHE", str(tmp_path.parent / (tmp_path.name + "_cache")))
    monkeypatch.delenv("UVIM_KERAS_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = case.build(tmp_path)
    before = snapshot(tmp_path)
    loads = []
    if case.console is not None:
        rc, stdout, err = run_console(tmp_path, argv, **case.console)
    else:
        real = UViM.from_preset
        needs_model = (case.code == 0 if case.model is None else case.model) \
            and not case.real_load

        def from_preset(preset, **kwargs):
            loads.append(preset)
            if case.real_load:
                return real(preset, **kwargs)
            assert needs_model, f"a model was loaded, for {preset!r}: the check came too late"
            assert os.fspath(preset) == PRESET
            return request.getfixturevalue("bundled_uvim")

        if needs_model:
            request.getfixturevalue("bundled_uvim")  # loaded before the patches below
        monkeypatch.setattr(UViM, "from_preset", from_preset)
        if case.setup is not None:
            case.setup(monkeypatch, tmp_path)
        rc, stdout, err = run_cli(capsys, *argv)
        monkeypatch.undo()
    assert "Traceback" not in err, err
    if case.code == 0:
        assert rc == 0 and err == "", (rc, err)
    else:
        assert rc == case.code, (rc, err)
        lines = err.splitlines()
        assert len(lines) == 1, err
        command = "predict" if argv[0] == "predict" else "convert"
        assert lines[0].startswith(f"uvim-keras {command}: error: "), lines[0]
        assert re.search(case.pattern, lines[0]), lines[0]
        if os.environ.get("UVIM_CORPUS_REPORT"):  # the messages, for a report
            with open(os.environ["UVIM_CORPUS_REPORT"], "a", encoding="utf-8") as f:
                f.write(f"{case.name}\t{rc}\t{lines[0].replace(str(tmp_path), '$TMP')}\n")
        assert (case.code == 2) == lines[0].endswith(f"(see uvim-keras {command} --help)"), lines[0]
    after = snapshot(tmp_path)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert changed == [], f"{case.name}: the command changed or removed {changed}"
    created = set(after) - set(before)
    allowed = set(case.new_files)
    if (case.code == 0 if case.writes is None else case.writes) and case.out is not None:
        allowed |= {k for k in created if k == case.out or k.startswith(case.out + os.sep)}
    assert sorted(created - allowed) == [], f"{case.name}: the command created {created - allowed}"
    assert not [k for k in created if os.path.basename(k).startswith(".")], created  # temp files
    if case.console is None and not case.real_load and not case.model and case.code != 0:
        assert loads == [], "the failure came after loading the model"
    if case.check is not None:
        case.check(tmp_path, stdout)
