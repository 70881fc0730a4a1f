"""What XLA makes of a train step (jax only): guards performance fixes that
hang on XLA's fusion heuristics rather than on the maths.

`layers.transformer.LayerNorm` computes the statistics in flax's order
(square first). With Keras' own LayerNormalization, XLA:CPU fuses the
residual stream's gradient of every block above into each block's backward
pass: loop fusions with 20-57 operands, recomputed per block (benchmarks/
README.md). This test compiles an LM train step and counts such fusions.

The MLP kernels are stored (out, in) (`layers.transformer.MLP_EQUATION`):
with Keras' (in, out) layout XLA:CPU turns their weight gradients into dots with a column-major
left operand, which YNNPACK refuses and Eigen runs at about half the speed
(benchmarks/README.md). The tests below count such library dots.
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


@pytest.mark.slow
def test_lm_train_step_has_no_oversized_fusions():
    lm = _deep_lm()
    hlo = _train_step_hlo(lm, _lm_batch(lm))
    assert "fusion(" in hlo  # the pattern does see the fusions
    assert _oversized_fusions(hlo) == []


@pytest.mark.slow
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


def _mlp_kernel_gradient_dots(hlo, width, mlp_dim):
    """Dots of the entry computation (not YNNPACK fusions) shaped like an MLP
    kernel: XLA:CPU runs those through Eigen."""
    entry = hlo.split("\nENTRY ", 1)[1]
    shapes = {f"f32[{width},{mlp_dim}]", f"f32[{mlp_dim},{width}]"}
    found = re.findall(r"= (f32\[\d+,\d+\])\{[\d,]+\} dot\(", entry)
    return [shape for shape in found if shape in shapes]


def test_lm_mlp_weight_gradients_run_through_ynnpack():
    lm = _deep_lm()
    hlo = _train_step_hlo(lm, _lm_batch(lm))
    assert "ynn_fusion" in hlo
    assert _mlp_kernel_gradient_dots(hlo, lm.width, lm.mlp_dim) == []


def test_the_check_detects_in_out_kernels(monkeypatch):
    """With Keras' (in, out) kernels (`Dense`'s layout) the Eigen dots
    appear, so the test above is not vacuous on this XLA version."""
    from uvim_keras.layers import transformer

    monkeypatch.setattr(transformer, "MLP_EQUATION", "abi,io->abo")
    lm = _deep_lm()
    assert tuple(lm.decoder_blocks[0].mlp.dense_0.kernel.shape) == (lm.width, lm.mlp_dim)
    dots = _mlp_kernel_gradient_dots(_train_step_hlo(lm, _lm_batch(lm)), lm.width, lm.mlp_dim)
    if not dots:
        pytest.skip("this XLA runs (in, out) kernel gradients through YNNPACK at this size")
    assert len(dots) >= 2
