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


@pytest.mark.slow
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


def test_semantic_task_gets_metric_pictures_and_model_card_for_free(tmp_path):
    """Nothing in uvim_keras names the example's task, yet evaluation, the
    pictures and the model card serve it through the task's hooks."""
    import keras

    from uvim_keras import UViM, UViMStage1
    from uvim_keras.evaluate import evaluate
    from uvim_keras.visualize.figures import demo_figure, picture
    from helpers import tiny_lm

    task = _load_example().SemanticSegmentationTask(num_classes=5)
    keras.utils.set_random_seed(0)
    stage1 = UViMStage1(task, **TINY)
    batch = panoptic_batch(4)
    batch = {"image": batch["image"], "labels": batch["labels"][..., :1]}
    # the metric: accuracy and mIoU of the class maps
    result = evaluate(stage1, [batch], progress=False)["metrics"]
    classes = to_numpy(stage1.predict_outputs(batch))
    assert set(result) == {"accuracy", "mIoU"}
    np.testing.assert_allclose(result["accuracy"], (classes == batch["labels"][..., 0]).mean())
    assert task.headline_metric == ("accuracy", "higher")
    # the pictures: class colours with a key of the classes present
    tile = task.output_rgb(classes[0])
    assert tile.shape == (16, 16, 3) and tile.dtype == np.uint8
    kind, rows = task.figure_key([classes])
    assert kind == "classes" and [label for _, label in rows] == [
        f"{k}: class {k}" for k in np.unique(classes)]
    image = ((batch["image"][0] + 1) * 127.5).astype("uint8")
    assert picture(task, image, [classes[0]]).width > 2 * 16
    figure = demo_figure(batch["image"], batch["labels"], {"stage I": classes}, task,
                         title="a new task", rows=2)
    assert figure.width > 3 * 16
    # the model card: the task's title and description
    uvim = UViM.from_stage1(tiny_lm(), stage1)
    uvim.save_to_preset(tmp_path / "semantic", metrics={"accuracy": 0.5})
    card = (tmp_path / "semantic" / "README.md").read_text()
    assert "# UViM semantic: semantic" in card and "labels (H, W, 1) int" in card
    assert "| accuracy | 0.5 |" in card
    loaded = UViM.from_preset(str(tmp_path / "semantic"))
    assert type(loaded.task).__name__ == "SemanticSegmentationTask"
