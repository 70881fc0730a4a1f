"""The evaluate helper runs models over datasets and returns the task metric."""

import numpy as np
import pytest

from common import to_numpy
from helpers import panoptic_batch, tiny_lm, tiny_stage1

CATEGORIES = [{"id": i, "name": f"c{i}", "isthing": int(i >= 3)} for i in range(1, 5)]


@pytest.mark.slow
def test_evaluate_stage1_equals_direct_metric_and_accepts_tf_data():
    from uvim_keras.data import as_tf_dataset
    from uvim_keras.evaluate import evaluate
    from uvim_keras.metrics import PanopticQuality

    model = tiny_stage1()
    data = panoptic_batch(6, seed=2)
    direct = PanopticQuality(CATEGORIES)
    direct.update_state(data["labels"], to_numpy(model.predict_outputs(data)))
    for source in (as_tf_dataset(data, batch_size=4), [data]):
        result = evaluate(model, source, categories=CATEGORIES, progress=False)
        assert result["num_examples"] == 6
        assert result["metrics"]["All"] == direct.result()["All"]


def test_evaluate_uvim_uses_the_lm_code():
    from uvim_keras import UViM
    from uvim_keras.evaluate import evaluate
    from uvim_keras.metrics import PanopticQuality

    uvim = UViM.from_stage1(tiny_lm(), tiny_stage1())
    data = panoptic_batch(4, seed=3)
    expected = PanopticQuality(CATEGORIES)
    expected.update_state(data["labels"], uvim.predict(data["image"], verbose=0))
    result = evaluate(uvim, [data], categories=CATEGORIES, progress=False)
    assert result["metrics"]["All"] == expected.result()["All"]


def test_evaluate_bad_input():
    from uvim_keras.evaluate import evaluate

    model = tiny_stage1()
    data = panoptic_batch(2)
    with pytest.raises(ValueError, match="categories is None"):
        evaluate(model, [data], progress=False)
    with pytest.raises(ValueError, match="dicts with keys 'image' and 'labels'"):
        evaluate(model, [data["image"]], categories=CATEGORIES, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], categories=CATEGORIES, progress=False)
    with pytest.raises(ValueError, match="expected a UViM or a UViMStage1"):
        evaluate(object(), [data], categories=CATEGORIES, progress=False)
