"""Token selection for autoregressive decoding: argmax, temperature, top-k, top-p.

Sampling uses the Gumbel-max trick with noise drawn *before* the decoding
loop (a JAX `while_loop` body cannot draw from a Keras `SeedGenerator`), so a
seed gives the same codes on every call.
"""

import keras
import numpy as np
from keras import ops

from uvim_keras.runtime.backend import uniform_per_seed

NEG_INF = -1e30


def gumbel_noise(shape, seed=None):
    """Standard Gumbel noise, float32."""
    u = keras.random.uniform(shape, minval=1e-20, maxval=1.0, seed=seed)
    return -ops.log(-ops.log(u))


def image_seeds(seed, start, count):
    """Per-image sampling seeds for images `start .. start + count - 1` of a
    run seeded with `seed`: well-mixed 31-bit ints from (seed, index), so an
    image's sample does not depend on the batch it is decoded in."""
    return [int(np.random.SeedSequence([int(seed), start + i]).generate_state(1)[0] >> 1)
            for i in range(count)]


def decoding_noise(code_len, batch, num_samples, vocab_size, seed):
    """Gumbel noise (code_len, batch * num_samples, vocab_size) for sampling.

    `seed` is None (unseeded), an int (one draw for the whole batch) or a
    sequence of `batch` ints, one per image: image b's `num_samples` codes
    then use only its own seed (rows b * num_samples .. (b + 1) * num_samples - 1).
    """
    if seed is None or isinstance(seed, (int, np.integer)):
        return gumbel_noise((code_len, batch * num_samples, vocab_size), seed)
    seeds = list(seed)
    if len(seeds) != batch or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(
            f"seed={seed!r}: expected None, an int or a sequence of {batch} ints "
            "(one per image)."
        )
    return per_image_noise(np.asarray(seeds, "int32"), code_len, num_samples, vocab_size)


def per_image_noise(seeds, code_len, num_samples, vocab_size):
    """`decoding_noise` for per-image seeds given as an int tensor (B,),
    also inside a compiled function: image b's rows are what
    `gumbel_noise((code_len, num_samples, vocab_size), seed=seeds[b])` draws."""
    u = uniform_per_seed(seeds, (code_len, num_samples, vocab_size), 1e-20, 1.0)
    noise = ops.transpose(-ops.log(-ops.log(u)), (1, 0, 2, 3))  # (L, B, S, V)
    return ops.reshape(noise, (code_len, -1, vocab_size))


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
    noise = ops.cast(ops.convert_to_tensor(noise), logits.dtype)  # a numpy array too
    return ops.cast(ops.argmax(logits + noise, axis=-1), "int32")
