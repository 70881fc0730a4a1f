"""Shared test helpers (import as `from common import ...`).

Kept out of conftest.py: tests/metrics has its own conftest, and a
`from common import` would pick whichever conftest module loaded first.
"""

import json
import os
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
BIG_VISION_FIXTURES = pathlib.Path(
    os.environ.get("UVIM_BIG_VISION_FIXTURES", REPO.parent / "shared" / "fixtures" / "big_vision")
)


def to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def big_vision_io_files(pattern):
    """All fixture io files matching `pattern` (e.g. 'stageI_*_io.npz')."""
    return sorted(BIG_VISION_FIXTURES.glob(pattern))


def load_io(path):
    """(arrays, meta) of a big_vision io fixture."""
    io = np.load(path)
    return io, json.loads(str(io["meta/config_json"]))


def params_file(io_path):
    return io_path.with_name(io_path.name.replace("_io.npz", "_params.npz"))
