"""CodeDropout: modes, masks (prefix / permuted prefix), statistics, seeds."""

import numpy as np
import pytest
from common import to_numpy

pytestmark = pytest.mark.multibackend

B, C, D = 2000, 16, 3


def _masks(mode, seed, batch=B, code_len=C):
    """The keep-masks (batch, code_len) that one training call applies."""
    from uvim_keras.layers import CodeDropout

    x = np.ones((batch, code_len, D), "float32")
    y = to_numpy(CodeDropout(mode, seed=seed)(x, training=True))
    # Every feature of a word is kept or dropped together.
    assert (y == y[..., :1]).all()
    return y[..., 0]


def _importance(code_len=C):
    return np.linspace(1, 0, code_len + 2)[1:-1]


@pytest.mark.parametrize("mode", ["none", "linear", "random"])
def test_inference_is_identity(mode):
    from uvim_keras.layers import CodeDropout

    x = np.random.default_rng(0).normal(size=(4, C, D)).astype("float32")
    layer = CodeDropout(mode, seed=0)
    for training in (None, False):
        np.testing.assert_array_equal(to_numpy(layer(x, training=training)), x)


def test_none_mode_is_identity_in_training():
    from uvim_keras.layers import CodeDropout

    x = np.random.default_rng(0).normal(size=(4, C, D)).astype("float32")
    np.testing.assert_array_equal(to_numpy(CodeDropout("none", seed=0)(x, training=True)), x)


def test_masks_multiply_the_input():
    from uvim_keras.layers import CodeDropout

    x = np.random.default_rng(0).normal(size=(64, C, D)).astype("float32")
    for mode in ("linear", "random"):
        y = to_numpy(CodeDropout(mode, seed=3)(x, training=True))
        mask = _masks(mode, seed=3, batch=64)
        np.testing.assert_array_equal(y, x * mask[..., None])
        assert 0 < mask.mean() < 1


def test_linear_keeps_a_prefix_with_importance_probabilities():
    mask = _masks("linear", seed=0)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (np.diff(mask, axis=-1) <= 0).all(), "linear mask must be a prefix"
    # P(keep word i) = P(u < importance_i) = importance_i.
    np.testing.assert_allclose(mask.mean(0), _importance(), atol=0.05)
    assert mask.mean() == pytest.approx(0.5, abs=0.03)
    # Kept lengths are uniform over 0..C (each has probability 1 / (C + 1)).
    hist = np.bincount(mask.sum(-1).astype(int), minlength=C + 1) / B
    assert len(hist) == C + 1
    np.testing.assert_allclose(hist, 1 / (C + 1), atol=0.03)


def test_random_keeps_as_many_words_as_linear_at_other_positions():
    linear = _masks("linear", seed=7)
    random = _masks("random", seed=7)  # same seed -> same per-example thresholds
    assert set(np.unique(random)) <= {0.0, 1.0}
    np.testing.assert_array_equal(random.sum(-1), linear.sum(-1))
    partial = (random.sum(-1) > 0) & (random.sum(-1) < C)
    assert partial.sum() > B // 2
    # Not prefixes, and the kept positions differ between examples.
    assert (np.diff(random[partial], axis=-1) > 0).any(axis=-1).mean() > 0.9
    same_count = random[random.sum(-1) == C // 2]
    assert len(same_count) > 20
    assert len({row.tobytes() for row in same_count}) > 0.9 * len(same_count)
    # Positions are exchangeable: every word is kept about half of the time.
    np.testing.assert_allclose(random.mean(0), 0.5, atol=0.06)
    assert random.mean() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("mode", ["linear", "random"])
def test_seed_reproducible(mode):
    from uvim_keras.layers import CodeDropout

    x = np.random.default_rng(0).normal(size=(32, C, D)).astype("float32")
    a, b, c = (CodeDropout(mode, seed=s) for s in (5, 5, 6))
    ya, yb, yc = (to_numpy(layer(x, training=True)) for layer in (a, b, c))
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    # The generator advances: a second step draws new masks.
    assert not np.array_equal(to_numpy(a(x, training=True)), ya)


def test_invalid_mode_raises_naming_it():
    from uvim_keras.layers import CodeDropout

    with pytest.raises(ValueError, match="'prefix'"):
        CodeDropout("prefix")


def test_config_round_trip():
    from uvim_keras.layers import CodeDropout

    layer = CodeDropout("linear", seed=11, name="cd")
    cfg = layer.get_config()
    clone = CodeDropout.from_config(cfg)
    assert clone.mode == "linear" and clone.seed == 11 and clone.get_config() == cfg
