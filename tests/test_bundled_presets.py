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


def test_unknown_bundled_name_is_not_a_preset():
    from uvim_keras.presets.bundled import bundled_preset

    assert bundled_preset("shapes_unknown") is None
    assert bundled_preset("../weights") is None
