"""A task written in one file (examples/custom_task_semantic.py) plugs in."""

import importlib.util

import numpy as np
import pytest

from common import REPO, to_numpy
from helpers import TINY, panoptic_batch

pytestmark = pytest.mark.multibackend


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "custom_task_semantic", REPO / "examples" / "custom_task_semantic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_semantic_task_trains_saves_and_predicts(tmp_path):
    import keras

    from uvim_keras import UViMStage1

    task_cls = _load_example().SemanticSegmentationTask
    keras.utils.set_random_seed(0)
    model = UViMStage1(task_cls(num_classes=5), **TINY)
    batch = panoptic_batch(8)
    batch = {"image": batch["image"], "labels": batch["labels"][..., :1]}
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate(batch, verbose=0, return_dict=True)["loss"]
    model.fit(batch, epochs=20, batch_size=8, verbose=0)
    after = model.evaluate(batch, verbose=0, return_dict=True)["loss"]
    assert after < 0.5 * before
    classes = to_numpy(model.predict_outputs(batch))
    assert classes.shape == (8, 16, 16) and classes.dtype == np.int32
    assert (classes == batch["labels"][..., 0]).mean() > 0.8
    path = tmp_path / "semantic.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.task).__name__ == "SemanticSegmentationTask"
    np.testing.assert_array_equal(to_numpy(loaded.predict_outputs(batch)), classes)
    with pytest.raises(ValueError, match=r"expected classes in \[0, 5\)"):
        model({"image": batch["image"], "labels": batch["labels"][..., :1] + 5})
