"""Token selection for autoregressive decoding: argmax, temperature, top-k, top-p.

Sampling uses the Gumbel-max trick with noise drawn *before* the decoding
loop (a JAX `while_loop` body cannot draw from a Keras `SeedGenerator`), so a
seed gives the same codes on every call.
"""

import keras
from keras import ops

NEG_INF = -1e30


def gumbel_noise(shape, seed=None):
    """Standard Gumbel noise, float32."""
    u = keras.random.uniform(shape, minval=1e-20, maxval=1.0, seed=seed)
    return -ops.log(-ops.log(u))


def select_tokens(logits, noise, temperature, top_k=0, top_p=0.0, mask_bos=True):
    """Next tokens (N,) int32 from logits (N, V).

    temperature == 0 -> argmax; otherwise argmax(logits / T + gumbel), i.e. a
    sample of softmax(logits / T) restricted to the top-k tokens and/or the
    top-p nucleus. `mask_bos` excludes token 0.
    """
    logits = ops.cast(logits, "float32")
    if mask_bos:
        bos = ops.arange(logits.shape[-1]) == 0
        logits = ops.where(bos[None, :], NEG_INF, logits)
    if temperature == 0:
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    logits = logits / temperature
    if top_k:
        kth = ops.top_k(logits, top_k)[0][:, -1:]
        logits = ops.where(logits < kth, NEG_INF, logits)
    if top_p:
        ordered = ops.flip(ops.sort(logits, axis=-1), axis=-1)
        probs = ops.softmax(ordered, axis=-1)
        mass_before = ops.cumsum(probs, axis=-1) - probs
        # The smallest logit kept: tokens whose preceding mass is < top_p.
        kept = ops.where(mass_before < top_p, ordered, -NEG_INF)
        threshold = ops.min(kept, axis=-1, keepdims=True)
        logits = ops.where(logits < threshold, NEG_INF, logits)
    return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")
