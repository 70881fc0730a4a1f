"""The package as a user installs it: sdist -> wheel -> a fresh venv.

The wheel must ship the bundled presets (the repository's top-level
`weights/`, installed as `uvim_keras._weights`) so that
`UViM.from_preset("shapes_panoptic")` works outside the checkout. Everything
is offline: the sdist and wheel are built without build isolation, the wheel
is installed with `--no-index --no-deps`, and the new venv reuses this
environment's installed packages (a .pth path line, which does not run this
environment's own .pth files, e.g. the editable install's finder).

About 25 s on a 2-core machine (marker `packaging`; deselect with
`-m "not packaging"`).
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from common import REPO, run_command, run_json

PRESETS = ("shapes_panoptic", "shapes_depth", "shapes_colorization")
PRESET_FILES = ("config.json", "model.weights.h5", "task.json", "task.weights.h5",
                "uvim_preset.json")
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", "uvim_demo", ".venv", "*.pyc")

pytestmark = [pytest.mark.packaging, pytest.mark.slow]


def _run(cmd, cwd, env=None, timeout=300):
    """`run_command` (tests/common.py: asserts exit status 0) with 5 minutes' time."""
    return run_command(cmd, cwd=cwd, env=env, timeout=timeout)


def _version():
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def _source_packages():
    return sorted(
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "uvim_keras").rglob("__init__.py") if "__pycache__" not in p.parts
    )


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONNOUSERSITE="1", **extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel): the sdist built from a copy of the checkout and the
    wheel built from that sdist (as pip does for `pip install uvim-keras`
    from source)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    dist = tmp / "dist"
    dist.mkdir()
    proc = _run([sys.executable, "-c",
                 f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"],
                cwd=src)
    sdist = dist / proc.stdout.strip().splitlines()[-1]
    unpacked = tmp / "unpacked"
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(unpacked, filter="data")
        except TypeError:  # Python without extraction filters (< 3.10.12 / 3.11.4)
            tar.extractall(unpacked)
    (root,) = unpacked.iterdir()
    _run([sys.executable, "-m", "pip", "wheel", root, "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist], cwd=tmp)
    (wheel,) = dist.glob("*.whl")
    return sdist, wheel


def test_sdist_ships_the_bundled_presets(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for preset in PRESETS:
        for f in PRESET_FILES:
            assert f"weights/{preset}/{f}" in names, (preset, f)
    assert "pyproject.toml" in names and "uvim_keras/cli/__init__.py" in names


def test_wheel_ships_every_package_and_the_bundled_presets(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for preset in PRESETS:
            for f in PRESET_FILES:
                member = f"uvim_keras/_weights/{preset}/{f}"
                assert member in names, member
                # the very files of the checkout
                assert _sha(z.read(member)) == _sha((REPO / "weights" / preset / f).read_bytes())
    # pyproject.toml lists the packages (a package-dir mapping needs the list):
    # a package added to the source tree but not to that list would be missing.
    for package in _source_packages():
        assert package.replace(".", "/") + "/__init__.py" in names, (
            f"{package} is not in the wheel: add it to [tool.setuptools] packages in pyproject.toml")
    sources = {str(p.relative_to(REPO)) for p in (REPO / "uvim_keras").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert not any(n.startswith("weights/") for n in names)  # no top-level `weights` package


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A fresh venv outside the checkout with the wheel installed (offline)."""
    _, wheel = built
    tmp = tmp_path_factory.mktemp("venv")
    root = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=tmp)
    python = root / "bin" / "python"
    purelib = pathlib.Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                cwd=tmp).stdout.strip())
    # This environment's packages (keras, jax, keras-hub, ...), after the venv's own.
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "_uvim_keras_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--no-compile", wheel], cwd=tmp)
    return root, purelib


def test_installed_wheel_loads_and_predicts_with_the_bundled_preset(venv, tmp_path):
    root, purelib = venv
    script = """
import json, sys
import numpy as np
import uvim_keras
from uvim_keras import UViM
from uvim_keras.presets.bundled import BUNDLED_DIR
uvim = UViM.from_preset("shapes_panoptic")
rng = np.random.default_rng(0)
image = rng.uniform(-1, 1, (1,) + tuple(uvim.input_size) + (3,)).astype("float32")
pred = np.asarray(uvim.predict(image, verbose=0))
print(json.dumps({"file": uvim_keras.__file__, "bundled": str(BUNDLED_DIR),
                  "presets": sorted(UViM.presets), "shape": list(pred.shape),
                  "dtype": str(pred.dtype), "classes": int(pred[..., 0].max()),
                  "repo_on_path": any(p == sys.argv[1] or p.startswith(sys.argv[1] + "/")
                                      for p in sys.path)}))
"""
    env = _clean_env(UVIM_KERAS_CACHE=str(tmp_path / "cache"))
    got = run_json([root / "bin" / "python", "-c", script, REPO], cwd=tmp_path, env=env,
                   timeout=300)
    assert pathlib.Path(got["file"]).is_relative_to(purelib), got["file"]  # the wheel, not /work
    assert not pathlib.Path(got["file"]).is_relative_to(REPO)
    assert pathlib.Path(got["bundled"]).resolve() == (purelib / "uvim_keras" / "_weights").resolve()
    assert not got["repo_on_path"]
    assert {"shapes_panoptic", "shapes_depth", "shapes_colorization"} <= set(got["presets"])
    assert got["shape"] == [1, 64, 64, 2] and got["dtype"] == "int32"
    assert 0 <= got["classes"] < 6  # the task's 6 classes


def test_installed_cli_lists_the_bundled_presets(venv, tmp_path):
    root, purelib = venv
    env = _clean_env(UVIM_KERAS_CACHE=str(tmp_path / "cache"))
    exe = root / "bin" / "uvim-keras"
    out = _run([exe, "presets"], cwd=tmp_path, env=env).stdout
    for name in PRESETS + ("panoptic_coco", "depth_nyu"):
        assert re.search(rf"^{name}\s", out, re.M), out
    assert re.search(r"^shapes_panoptic\s.*bundled", out, re.M), out
    rows = {r["name"]: r for r in json.loads(_run([exe, "presets", "--json"], cwd=tmp_path,
                                                  env=env).stdout)}
    for name in PRESETS:
        assert rows[name]["bundled"] is True
        assert pathlib.Path(rows[name]["path"]).is_relative_to(purelib)
    assert isinstance(rows["shapes_panoptic"]["metrics"]["PQ"], float)
    version = _run([exe, "--version"], cwd=tmp_path, env=env).stdout.strip()
    assert version == f"uvim-keras {_version()}"
