"""`code_diagnostics`: the LM's figures on the oracle's codes, against the
same figures computed directly from the LM's logits and greedy codes."""

import numpy as np
import pytest

from common import to_numpy
from helpers import TINY_LM, randomize, tiny_lm

pytestmark = pytest.mark.multibackend


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype("float32")


def _lm(autoregressive=True):
    lm = tiny_lm(autoregressive=autoregressive)
    randomize(lm, 1)  # the logits layer is zero-initialised
    return lm


@pytest.mark.parametrize("autoregressive", [True, False])
def test_figures_are_the_lms_own(autoregressive):
    from uvim_keras.code_diagnostics import code_diagnostics

    lm, images = _lm(autoregressive), _images(5)
    codes = np.random.default_rng(2).integers(0, TINY_LM["dict_size"], (5, TINY_LM["code_len"]))
    codes[0] = codes[0, 0]  # one code repeats its first word throughout
    stats = code_diagnostics(lm, images, codes, batch_size=2)  # batches of 2, 2 and 1

    logits = to_numpy(lm({"image": images, "codes": codes}))
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                           keepdims=True)) - logits.max(-1, keepdims=True)
    tokens = codes + 1
    np.testing.assert_allclose(
        stats["nll"], -np.take_along_axis(logp, tokens[..., None], -1).mean(), rtol=1e-5)
    assert stats["teacher_forced_accuracy"] == pytest.approx((logits.argmax(-1) == tokens).mean())
    greedy = to_numpy(lm.generate(images))
    assert stats["greedy_accuracy"] == pytest.approx((greedy == codes).mean())
    assert stats["previous_word_accuracy"] == pytest.approx((codes[:, 1:] == codes[:, :-1]).mean())
    assert stats["previous_word_accuracy"] >= 3 / 15  # the repeated code's 3 pairs
    assert stats["oracle_distinct_words"] == pytest.approx(
        np.mean([len(set(c)) for c in codes]))
    assert stats["greedy_distinct_words"] == pytest.approx(np.mean([len(set(c)) for c in greedy]))


def test_the_lms_own_greedy_code_is_matched_entirely():
    from uvim_keras.code_diagnostics import code_diagnostics

    lm, images = _lm(), _images(3)
    greedy = to_numpy(lm.generate(images))
    stats = code_diagnostics(lm, images, greedy)
    assert stats["greedy_accuracy"] == 1.0
    assert stats["greedy_distinct_words"] == stats["oracle_distinct_words"]


@pytest.mark.parametrize("codes, batch_size, message", [
    (np.zeros((3, 4), "float32"), 64, "codes has shape (3, 4) and dtype float32; expected integer"),
    (np.zeros((3,), "int32"), 64, "codes has shape (3,)"),
    (np.zeros((0, 4), "int32"), 64, "codes is empty"),
    (np.zeros((2, 4), "int32"), 64, "images has 3 examples and codes 2"),
    (np.zeros((3, 4), "int32"), 0, "batch_size=0; expected a positive int"),
])
def test_bad_arguments_are_named(codes, batch_size, message):
    from uvim_keras.code_diagnostics import code_diagnostics

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        code_diagnostics(_lm(), _images(3), codes, batch_size=batch_size)
