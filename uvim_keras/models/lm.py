"""UViM stage II: the guiding-code language model p(z | x)."""

import keras
import numpy as np
from keras import ops

from uvim_keras.runtime.backend import CompiledFunctions, compile_stateless
from uvim_keras.layers import DecoderBlock, PatchEmbedding, PositionEmbedding, TransformerEncoder
from uvim_keras.layers.renamed import renamed_arguments
from uvim_keras.layers.transformer import layer_norm
from uvim_keras.models.adaptable import AdaptableModel
from uvim_keras.models.checks import (
    check_codes, check_image, check_same_batch, grid_size, pair, prepare_images)
from uvim_keras.models.sampling import decoding_noise, select_tokens

BOS = 0


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(dropout="dropout_rate")
class GuidingCodeLM(AdaptableModel):
    """Encoder-decoder transformer that models the guiding code given the image.

    A ViT encoder reads the image; an autoregressive decoder (causal
    self-attention, cross-attention to the image tokens, MLP; attention
    without biases) predicts the code. Tokens are `code + 1`; token 0 is BOS,
    so `vocab_size = dict_size + 1`; teacher forcing shifts the tokens right by
    one. Trained with `fit` on `{"image": (B, H, W, 3), "codes": (B, code_len)}`
    with the mean token cross-entropy.

    `generate` decodes with a self-attention key/value cache; the image's
    cross-attention keys/values are projected once per call (big_vision
    re-projects them at every step). Token 0 is never sampled: big_vision can
    emit it, and the code -1 it maps to silently selects the *last* codeword.
    `generate(..., mask_bos=False)` restores big_vision's behaviour
    (0 -> code dict_size - 1).

    Defaults are big_vision's ViT-L/16-sized LM of the released models.

    `autoregressive=False` builds the paper's "no Autoreg." LM (UViM, Table 2):
    the same encoder and decoder blocks, but the decoder's self-attention is
    not causal and its input is a learned query per code position
    (`decoder_queries`, (1, code_len, width)) instead of the shifted token
    embeddings, so all code tokens are predicted at once from the image alone
    (such an LM has no `token_embedding` and no `decoder_posemb`: the queries
    are the decoder's position embedding; `posemb` applies to the image
    encoder). Training (`fit`, the loss, the vocabulary with token 0 and the
    logits layer) is as for the autoregressive LM; `generate` is one decoder
    pass: argmax per position at temperature 0, else every token sampled
    independently from its own softmax (top_k / top_p per position), with
    the same noise, seeds, `mask_bos` and `num_samples` as the
    autoregressive LM. `call` still takes `{"image", "codes"}` (the codes
    feed the loss) but its logits do not depend on the codes. big_vision's
    checkpoints (`uvim_keras.checkpoints.big_vision`) are autoregressive LMs only.

    Args:
      input_size: int or (int, int). Image size (H, W). Defaults to `512`.
      patch_size: int or (int, int). The encoder's patch (ph, pw); H and W
        must divide by it. Defaults to `16`.
      code_len: int. Tokens in a guiding code. Defaults to `256`.
      dict_size: int. Codewords in the stage-I dictionary (`vocab_size` is
        one more: token 0 is BOS). Defaults to `4096`.
      width: int. Width of the encoder and the decoder. Defaults to `1024`.
      num_layers: int. Blocks of the encoder, and as many of the decoder.
        Defaults to `24`.
      num_heads: int. Attention heads; the width must divide by it. Defaults
        to `16`.
      mlp_dim: int. Hidden width of the MLPs. Defaults to `4096`.
      posemb: str. `"learn"` or `"sincos2d"` position embeddings (of the
        image encoder and, autoregressive, of the decoder). Defaults to
        `"learn"`.
      dropout_rate: float. Dropout rate of the encoder and decoder blocks and
        of the decoder's input. Defaults to `0.0`. Formerly `dropout` (still
        accepted).
      autoregressive: bool. True (default): the autoregressive LM above.
        False: the non-autoregressive LM (all tokens predicted at once, see
        above).
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> lm = GuidingCodeLM(input_size=32, patch_size=8, code_len=16, dict_size=16,
    ...                    width=32, num_layers=2, num_heads=2, mlp_dim=64)
    >>> lm.compile(optimizer="adam")
    >>> # lm.fit({"image": images, "codes": codes}, epochs=1)
    >>> codes = lm.generate(images)                    # greedy, (B, 16)
    >>> samples = lm.generate(images, num_samples=4, temperature=1.0, seed=0)
    >>> # the "no Autoreg." ablation: all 16 tokens in one decoder pass
    >>> parallel = GuidingCodeLM(input_size=32, patch_size=8, code_len=16,
    ...                          dict_size=16, width=32, num_layers=2, num_heads=2,
    ...                          mlp_dim=64, autoregressive=False)
    >>> codes = parallel.generate(images)              # (B, 16), one pass
    """

    def __init__(
        self,
        input_size=512,
        patch_size=16,
        code_len=256,
        dict_size=4096,
        width=1024,
        num_layers=24,
        num_heads=16,
        mlp_dim=4096,
        posemb="learn",
        dropout_rate=0.0,
        autoregressive=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(autoregressive, (bool, np.bool_)):
            raise ValueError(f"autoregressive={autoregressive!r}: expected True or False.")
        self.input_size = pair(input_size, "input_size")
        self.patch_size = pair(patch_size, "patch_size")
        self.grid_size = grid_size(self.input_size, self.patch_size)
        self.code_len = int(code_len)
        self.dict_size = int(dict_size)
        self.vocab_size = self.dict_size + 1
        self.width = int(width)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.posemb = posemb
        self.dropout_rate = float(dropout_rate)
        self.autoregressive = bool(autoregressive)

        policy = self.dtype_policy
        self.image_embedding = PatchEmbedding(
            self.width, self.patch_size, name="image_embedding", dtype=policy)
        self.encoder_posemb = PositionEmbedding(
            posemb, self.grid_size, name="encoder_posemb", dtype=policy)
        self.encoder = TransformerEncoder(
            self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate, name="encoder",
            dtype=policy,
        )
        if self.autoregressive:
            self.token_embedding = keras.layers.Embedding(
                self.vocab_size, self.width,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="token_embedding", dtype=policy,
            )
            self.decoder_posemb = PositionEmbedding(
                posemb, (1, self.code_len), name="decoder_posemb", dtype=policy)
            self.decoder_queries = None
        else:  # one learned query per position: the decoder's whole input
            self.token_embedding = self.decoder_posemb = None
            self.decoder_queries = PositionEmbedding(
                "learn", (1, self.code_len), name="decoder_queries", dtype=policy)
        self.decoder_dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy)
        self.decoder_blocks = [
            DecoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                         causal=self.autoregressive,
                         name=f"decoder_block_{i}", dtype=policy)
            for i in range(self.num_layers)
        ]
        self.decoder_norm = layer_norm("decoder_norm", policy)
        self.logits_dense = keras.layers.Dense(
            self.vocab_size, kernel_initializer="zeros", name="logits", dtype=policy,
        )
        self._compiled = CompiledFunctions()
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        num_tokens = self.grid_size[0] * self.grid_size[1]
        img_tokens = (None, num_tokens, self.width)
        seq = (None, self.code_len, self.width)
        self.image_embedding.build((None, *self.input_size, 3))
        self.encoder_posemb.build(img_tokens)
        self.encoder.build(img_tokens)
        if self.autoregressive:
            self.token_embedding.build((None, self.code_len))
            self.decoder_posemb.build(seq)
        else:
            self.decoder_queries.build(seq)
        for block in self.decoder_blocks:
            block.build(seq, img_tokens)
        self.decoder_norm.build(seq)
        self.logits_dense.build(seq)
        self.built = True

    # -- teacher forcing ------------------------------------------------------
    def encode(self, image, training=None):
        """Image (B, H, W, 3) in [-1, 1] -> encoded tokens (B, G, width)."""
        check_image(image, self.input_size)
        x = self.image_embedding(ops.cast(image, self.compute_dtype))
        return self.encoder(self.encoder_posemb(x), training=training)

    def decode(self, encoded, tokens=None, training=None):
        """Logits (B, L, vocab) from encoded images (B, G, width): teacher
        forced on LM tokens (B, L) (= code + 1), or, for a non-autoregressive
        LM, of all positions at once (`tokens` is not used and may be None)."""
        if self.autoregressive:
            if tokens is None:
                raise ValueError(
                    "tokens=None: an autoregressive LM decodes teacher-forced on the LM tokens "
                    "(B, code_len) (= codes + 1).")
            tokens = ops.cast(tokens, "int32")
            shifted = ops.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
            x = self.decoder_posemb(self.token_embedding(shifted))
        else:  # the queries, broadcast over the batch: (B, 1, 1) + (1, L, W)
            x = self.decoder_queries(ops.zeros_like(encoded[:, :1, :1]))
        x = self.decoder_dropout(x, training=training)
        for block in self.decoder_blocks:
            x = block(x, encoded, training=training)
        return self.logits_dense(self.decoder_norm(x))

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or not {"image", "codes"} <= set(inputs):
            raise ValueError(
                "inputs must be a dict {'image': (B, H, W, 3), 'codes': (B, code_len)}; got "
                f"{type(inputs).__name__}."
            )
        image, codes = inputs["image"], inputs["codes"]
        check_codes(codes, self.code_len, self.dict_size)
        check_same_batch(image, codes, "image", "codes")
        encoded = self.encode(image, training=training)
        return self.decode(encoded, ops.cast(codes, "int32") + 1, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        tokens = ops.cast(x["codes"], "int32") + 1
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        nll = -ops.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        loss = ops.mean(nll)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    # -- decoding -------------------------------------------------------------
    def sample_codes(self, images, *, noise=None, temperature=0.0, top_k=0, top_p=0.0,
                     mask_bos=True, num_samples=1):
        """Guiding codes (B * num_samples, code_len) int32 for images
        (B, H, W, 3), decoded inside the computation (it traces and compiles;
        `generate` is the checked, compiled entry point): token by token, or
        in one decoder pass for a non-autoregressive LM.

        Args:
          images: (B, H, W, 3) in [-1, 1].
          noise: Gumbel noise (code_len, B * num_samples, vocab_size) when
            `temperature` > 0 (`sampling.decoding_noise`), else None.
            Position t of code row n uses noise[t, n] in both kinds of LM.
          temperature, top_k, top_p, mask_bos: as in `generate`.
          num_samples: codes per image; each image is encoded once.
        """
        settings = dict(noise=noise, temperature=temperature, top_k=top_k, top_p=top_p,
                        mask_bos=mask_bos, num_samples=num_samples)
        if self.autoregressive:
            tokens = self._sample_autoregressive(images, **settings)
        else:
            tokens = self._sample_parallel(images, **settings)
        codes = tokens - 1
        if not mask_bos:  # big_vision: code -1 indexes the last codeword
            codes = ops.where(codes < 0, self.dict_size - 1, codes)
        return codes

    def _sample_parallel(self, images, *, noise, temperature, top_k, top_p, mask_bos,
                         num_samples):
        """LM tokens (B * num_samples, code_len) of a non-autoregressive LM:
        one decoder pass per image (its logits do not depend on the sample),
        every position's token selected independently."""
        logits = self.decode(self.encode(images, training=False), training=False)
        if num_samples > 1:
            logits = ops.repeat(logits, num_samples, axis=0)
        n = ops.shape(logits)[0]
        flat_noise = None
        if noise is not None:  # (L, N, V) -> rows (n, t), as `logits` flattened
            flat_noise = ops.reshape(ops.transpose(ops.convert_to_tensor(noise), (1, 0, 2)),
                                     (-1, self.vocab_size))
        tokens = select_tokens(ops.reshape(logits, (-1, self.vocab_size)), flat_noise,
                               temperature, top_k, top_p, mask_bos)
        return ops.reshape(tokens, (n, self.code_len))

    def _sample_autoregressive(self, images, *, noise, temperature, top_k, top_p, mask_bos,
                               num_samples):
        """LM tokens (B * num_samples, code_len), decoded token by token
        with a self-attention key/value cache."""
        encoded = self.encode(images, training=False)
        if num_samples > 1:  # encode each image once, decode it num_samples times
            encoded = ops.repeat(encoded, num_samples, axis=0)
        n = ops.shape(encoded)[0]
        heads = self.num_heads
        head_dim = self.width // heads
        prepared = [b.prepare_decoding(encoded) for b in self.decoder_blocks]
        cache_shape = (n * heads, self.code_len, head_dim)  # see DecoderBlock.decode_step
        caches = [
            (ops.zeros(cache_shape, encoded.dtype), ops.zeros(cache_shape, encoded.dtype))
            for _ in self.decoder_blocks
        ]
        posemb = self.decoder_posemb(ops.zeros((1, self.code_len, self.width), encoded.dtype))

        def step(t, state):
            prev, tokens, caches = state
            x = self.token_embedding(prev[:, None])
            x = x + ops.slice(posemb, (0, t, 0), (1, 1, self.width))
            new_caches = []
            for block, (ck, cv), prep in zip(self.decoder_blocks, caches, prepared):
                x, ck, cv = block.decode_step(x, t, ck, cv, prep)
                new_caches.append((ck, cv))
            logits = self.logits_dense(self.decoder_norm(x))[:, 0]
            step_noise = None if noise is None else ops.take(noise, t, axis=0)
            nxt = select_tokens(logits, step_noise, temperature, top_k, top_p, mask_bos)
            tokens = ops.slice_update(tokens, (0, t), nxt[:, None])
            return nxt, tokens, new_caches

        init = (
            ops.zeros((n,), "int32") + BOS,
            ops.zeros((n, self.code_len), "int32"),
            caches,
        )
        _, tokens, _ = ops.fori_loop(0, self.code_len, step, init)
        return tokens

    def generate(self, images, num_samples=1, temperature=0.0, top_k=0, top_p=0.0,
                 seed=None, mask_bos=True):
        """Samples guiding codes for `images`: token by token, or for a
        non-autoregressive LM in a single decoder pass (every token selected
        independently, with the same settings and seeds).

        Args:
          images: (B, H, W, 3) floats in [-1, 1] (checked: one min/max pass;
            NaN/inf or values outside raise ValueError) or uint8 (converted).
          num_samples: codes per image.
          temperature: 0 = argmax (greedy; top_k and top_p then have no
            effect); > 0 samples from softmax(logits / T).
          top_k: if > 0, sample among the k most likely tokens only.
          top_p: if > 0, sample from the smallest set of tokens whose
            probability mass reaches top_p (nucleus sampling).
          seed: int for reproducible sampling, or a sequence of ints, one
            per image: each image's codes then depend on its own seed only,
            not on the other images of the batch.
          mask_bos: never emit token 0 (see the class docstring).
        Returns:
          int32 codes in [0, dict_size): (B, code_len) when num_samples == 1,
          else (B, num_samples, code_len).
        """
        _check_sampling(num_samples, temperature, top_k, top_p, self.vocab_size)
        check_image(images, self.input_size)
        images = ops.convert_to_tensor(prepare_images(images, "images"), self.compute_dtype)
        batch = images.shape[0]
        greedy = temperature == 0
        noise = None
        if not greedy:
            noise = decoding_noise(self.code_len, batch, num_samples, self.vocab_size, seed)
        settings = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                        mask_bos=bool(mask_bos), num_samples=int(num_samples))
        sample = self._compiled.get(tuple(sorted(settings.items())), lambda: compile_stateless(
            self, lambda img, nz: self.sample_codes(img, noise=nz, **settings)))
        codes = sample(images, noise)
        if num_samples > 1:
            codes = ops.reshape(codes, (batch, num_samples, self.code_len))
        return codes

    def get_config(self):
        return {
            **super().get_config(),
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "code_len": self.code_len,
            "dict_size": self.dict_size,
            "width": self.width,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "posemb": self.posemb,
            "dropout_rate": self.dropout_rate,
            "autoregressive": self.autoregressive,
        }


def _check_sampling(num_samples, temperature, top_k, top_p, vocab_size):
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; expected a positive int.")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}; expected a finite value >= 0.")
    if not isinstance(top_k, (int, np.integer)) or not 0 <= top_k < vocab_size:
        raise ValueError(f"top_k={top_k!r}; expected 0 (off) or 1..{vocab_size - 1}.")
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p={top_p!r}; expected 0 (off) or a value in (0, 1].")
