"""Small presets trained by `uvim-keras demo` and shipped in the repo's `weights/`.

`UViM.from_preset("shapes_panoptic")` loads them offline from a source
checkout (or an editable install); they need no download.
"""

import pathlib

#: Folder holding the bundled presets (the repository's top-level weights/).
BUNDLED_DIR = pathlib.Path(__file__).resolve().parents[2] / "weights"
BUNDLED_PRESETS = ("shapes_panoptic", "shapes_depth", "shapes_colorization")


def bundled_preset(name):
    """The folder of bundled preset `name`, or None if it is not one (or absent)."""
    if name not in BUNDLED_PRESETS:
        return None
    path = BUNDLED_DIR / name
    return path if (path / "config.json").is_file() else None
