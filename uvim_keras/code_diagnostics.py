"""How well a guiding-code LM predicts the oracle's codes: the figures that
say why UViM falls behind its oracle (or behind the base model alone).

UViM's inference decodes the LM's greedy code; the LM was trained
teacher-forced on the oracle's codes. `code_diagnostics` compares the two on
labelled images whose oracle codes are known:

* ``nll``: the LM's teacher-forced negative log-likelihood of the oracle's
  codes, nats per word (the training loss, on these images);
* ``teacher_forced_accuracy``: the share of words the LM's argmax gets right
  given the oracle's own previous words;
* ``greedy_accuracy``: the share of words of the LM's greedy code (what
  UViM decodes at T=0) equal to the oracle's;
* ``previous_word_accuracy``: the share of the oracle's words equal to the
  word before them, i.e. what copying the previous word achieves teacher
  forced (a high value with a low ``greedy_accuracy`` says the LM learnt to
  continue the code, not to read it from the image);
* ``oracle_distinct_words`` / ``greedy_distinct_words``: distinct words per
  code, on average (greedy codes with far fewer words have collapsed onto
  the frequent ones).

For a non-autoregressive LM the teacher-forced figures are those of its one
parallel pass (it does not read previous words).

Example:

>>> stats = code_diagnostics(lm, images, stage1.encode({"image": images, "labels": labels}))
>>> stats["greedy_accuracy"], stats["teacher_forced_accuracy"]
"""

import numpy as np
from keras import ops

from uvim_keras.metrics.host import to_numpy


def _check(images, codes, batch_size):
    codes = np.asarray(to_numpy(codes))
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes has shape {codes.shape} and dtype {codes.dtype}; expected "
                         "integer codes (N, code_len).")
    if len(codes) == 0:
        raise ValueError("codes is empty; expected at least one code.")
    if len(images) != len(codes):
        raise ValueError(f"images has {len(images)} examples and codes {len(codes)}; expected "
                         "one code per image.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int.")
    return codes


def code_diagnostics(lm, images, codes, batch_size=64):
    """The LM's figures on `images` with the oracle's `codes` (module doc).

    Args:
      lm: a `GuidingCodeLM`.
      images: (N, H, W, 3) images as the LM takes them (in [-1, 1]).
      codes: (N, code_len) integer oracle codes of those images.
      batch_size: images per LM call.

    Returns:
      {"nll", "teacher_forced_accuracy", "greedy_accuracy",
       "previous_word_accuracy", "oracle_distinct_words",
       "greedy_distinct_words"}: Python floats.
    """
    codes = _check(images, codes, batch_size)
    nll, forced, greedy = [], [], []
    for start in range(0, len(codes), batch_size):
        image, code = images[start:start + batch_size], codes[start:start + batch_size]
        logits = lm({"image": image, "codes": code}, training=False)
        logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        logp = to_numpy(logp)
        tokens = code + 1  # LM tokens: 0 is the start token
        nll.append(-np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0])
        forced.append(logp.argmax(-1) == tokens)
        greedy.append(to_numpy(lm.generate(image, temperature=0.0)))
    greedy = np.concatenate(greedy)
    distinct = lambda c: float(np.mean([len(np.unique(row)) for row in c]))  # noqa: E731
    return {
        "nll": float(np.concatenate(nll).mean()),
        "teacher_forced_accuracy": float(np.concatenate(forced).mean()),
        "greedy_accuracy": float((greedy == codes).mean()),
        "previous_word_accuracy": float((codes[:, 1:] == codes[:, :-1]).mean())
        if codes.shape[1] > 1 else 0.0,
        "oracle_distinct_words": distinct(codes),
        "greedy_distinct_words": distinct(greedy),
    }
