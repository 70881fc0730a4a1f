"""What XLA makes of a train step (jax only): guards performance fixes that
hang on XLA's fusion heuristics rather than on the maths.

`layers.transformer.LayerNorm` computes the statistics in flax's order
(square first). With Keras' own LayerNormalization, XLA:CPU fuses the
residual stream's gradient of every block above into each block's backward
pass: loop fusions with 20-57 operands, recomputed per block (benchmarks/
README.md). This test compiles an LM train step and counts such fusions.
"""

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="inspects XLA's compiled HLO (jax only)"
)

MAX_FUSION_OPERANDS = 20
_FUSION = re.compile(r"= [^=]*? fusion\((?P<args>[^)]*)\), kind=kLoop")


def _train_step_hlo(model, batch):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, non_trainable, batch):
        y_pred, _ = model.stateless_call(trainable, non_trainable, batch, training=True)
        return model.compute_loss(x=batch, y_pred=y_pred)

    step = jax.jit(jax.grad(loss))
    return step.lower(trainable, non_trainable, batch).compile().as_text()


def _oversized_fusions(hlo):
    sizes = [len(m.group("args").split(",")) for m in _FUSION.finditer(hlo)]
    return [n for n in sizes if n > MAX_FUSION_OPERANDS]


def _lm_batch(lm, n=4, seed=0):
    rng = np.random.default_rng(seed)
    size = lm.input_size[0]
    return {
        "image": rng.uniform(-1, 1, (n, size, size, 3)).astype("float32"),
        "codes": rng.integers(0, lm.dict_size, (n, lm.code_len)).astype("int32"),
    }


def _deep_lm():
    from helpers import tiny_lm

    return tiny_lm(input_size=32, patch_size=8, code_len=8, num_layers=4, width=32, mlp_dim=64)


def test_lm_train_step_has_no_oversized_fusions():
    lm = _deep_lm()
    hlo = _train_step_hlo(lm, _lm_batch(lm))
    assert "fusion(" in hlo  # the pattern does see the fusions
    assert _oversized_fusions(hlo) == []


def test_the_check_detects_keras_layernorm_fusions(monkeypatch):
    """The same step with Keras' LayerNormalization shows the pathology, so
    the test above is not vacuous on this XLA version."""
    from uvim_keras.layers import transformer

    monkeypatch.setattr(
        transformer.LayerNorm, "call",
        lambda self, x: keras.ops.layer_normalization(x, self.gamma, self.beta, -1, self.epsilon),
    )
    lm = _deep_lm()
    oversized = _oversized_fusions(_train_step_hlo(lm, _lm_batch(lm)))
    if not oversized:
        pytest.skip("this XLA does not build the oversized fusions at this size")
    assert max(oversized) > MAX_FUSION_OPERANDS
