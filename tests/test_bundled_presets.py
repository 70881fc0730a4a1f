"""The presets in weights/ (trained by `uvim-keras demo`) still reach their
recorded quality: a change that breaks the models shows up here."""

import json

import numpy as np
import pytest

from uvim_keras.presets.bundled import BUNDLED_DIR


def _recorded(name):
    return json.loads((BUNDLED_DIR / name / "uvim_preset.json").read_text())


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes_panoptic").is_dir(), reason="no bundled preset")
def test_bundled_panoptic_preset_reaches_its_recorded_pq():
    from uvim_keras import UViM
    from uvim_keras.data.synthetic import SYNTHETIC_TASKS, make_panoptic_shapes
    from uvim_keras.metrics import PanopticQuality

    uvim = UViM.from_preset("shapes_panoptic")
    recorded = _recorded("shapes_panoptic")["metrics"]["PQ"]
    held_out = make_panoptic_shapes(200, size=64, seed=10_000)
    pred = uvim.predict(held_out["image"], batch_size=100, verbose=0)
    pq = PanopticQuality(SYNTHETIC_TASKS["panoptic"]["categories"])
    pq.update_state(held_out["labels"], pred)
    got = 100 * pq.result()["All"]["pq"]
    assert abs(got - recorded) <= 0.5, (got, recorded)


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes_depth").is_dir(), reason="no bundled preset")
def test_bundled_depth_preset_reaches_its_recorded_rmse():
    from uvim_keras import UViM
    from uvim_keras.data.synthetic import make_depth_scenes
    from uvim_keras.metrics import DepthMetrics

    uvim = UViM.from_preset("shapes_depth")
    recorded = _recorded("shapes_depth")["metrics"]["RMSE"]
    held_out = make_depth_scenes(200, size=64, seed=10_000)
    pred = uvim.predict(held_out["image"], batch_size=100, verbose=0)  # greedy code
    metrics = DepthMetrics(min_depth=uvim.task.min_depth, max_depth=uvim.task.max_depth)
    metrics.update_state(held_out["labels"][..., 0], pred)
    got = float(metrics.result()["RMSE"])
    assert abs(got - recorded) <= 0.01, (got, recorded)


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes_colorization").is_dir(),
                    reason="no bundled preset")
def test_bundled_colorization_preset_reaches_its_recorded_colourfulness():
    from uvim_keras import UViM
    from uvim_keras.data.synthetic import make_colorization_shapes
    from uvim_keras.demo import colourfulness

    uvim = UViM.from_preset("shapes_colorization")
    recorded = _recorded("shapes_colorization")["metrics"]
    assert uvim.default_temperature == 1.0  # the code is sampled, as the demo recorded it
    held_out = make_colorization_shapes(200, size=64, seed=10_000)
    pred = uvim.predict(held_out["image"], batch_size=64, seed=0, verbose=0)
    got = colourfulness(pred)
    mse = float(np.mean((pred - held_out["labels"]) ** 2))
    assert abs(got - recorded["colourfulness"]) <= 0.01, (got, recorded)
    assert abs(mse - recorded["MSE"]) <= 0.005, (mse, recorded)


def test_unknown_bundled_name_is_not_a_preset():
    from uvim_keras.presets.bundled import bundled_preset

    assert bundled_preset("shapes_unknown") is None
    assert bundled_preset("../weights") is None
