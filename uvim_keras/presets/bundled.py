"""Small presets trained by `uvim-keras demo` and shipped with the package.

`UViM.from_preset("shapes_panoptic")` loads them offline; they need no
download. They live in the repository's top-level `weights/` folder, which
the wheel and the sdist ship as the data package `uvim_keras._weights`
(pyproject.toml maps that package onto `weights/`). `BUNDLED_DIR` is that
package's folder when it is importable (a wheel install, or an editable
install made after the mapping was added) and the source tree's `weights/`
otherwise (a checkout on sys.path, an older editable install).
"""

import importlib.util
import json
import pathlib

#: The bundled presets' names, in the order they are listed.
BUNDLED_PRESETS = ("shapes_panoptic", "shapes_depth", "shapes_colorization")
#: The data package the wheel installs them as.
BUNDLED_PACKAGE = "uvim_keras._weights"
_SOURCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "weights"


def _has_presets(folder):
    return any((folder / name / "config.json").is_file() for name in BUNDLED_PRESETS)


def find_bundled_dir():
    """The folder holding the bundled presets (see the module docstring)."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = pathlib.Path(location)
        if _has_presets(folder):
            return folder
    return _SOURCE_DIR


#: Folder holding the bundled presets.
BUNDLED_DIR = find_bundled_dir()


def bundled_preset(name):
    """The folder of bundled preset `name`, or None if it is not one (or absent)."""
    if name not in BUNDLED_PRESETS:
        return None
    path = BUNDLED_DIR / name
    return path if (path / "config.json").is_file() else None


def bundled_info(name):
    """The model card fields (`uvim_preset.json`) of a bundled preset, with
    `name` and `path` added, or None if it is not there."""
    path = bundled_preset(name)
    if path is None:
        return None
    try:
        info = json.loads((path / "uvim_preset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    info.setdefault("kind", "uvim")
    info.setdefault("task", "")
    info.setdefault("description", f"UViM trained by uvim-keras demo ({name})")
    info.setdefault("metrics", {})
    return {**info, "name": name, "path": str(path)}


def bundled_presets():
    """{name: bundled_info(name)} of the bundled presets that are present."""
    return {name: info for name in BUNDLED_PRESETS if (info := bundled_info(name)) is not None}
