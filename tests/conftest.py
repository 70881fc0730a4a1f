"""Shared test helpers.

The backend is chosen by KERAS_BACKEND before Keras is imported
(`tests/run_all.py` runs the `multibackend` tests once per backend).
"""

import json
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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


@pytest.fixture
def clear_keras_session():
    import keras

    keras.utils.clear_session()
    yield
