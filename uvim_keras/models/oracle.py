"""The restricted oracle (Ω) and the base model (f) of UViM's stage I."""

import keras
from keras import ops

from uvim_keras.layers import (
    PatchEmbedding,
    PatchHead,
    PatchStem,
    PositionEmbedding,
    TokenMixing,
    TokenResize,
    TransformerEncoder,
    patchify,
    unpatchify,
)
from uvim_keras.layers.renamed import renamed_arguments
from uvim_keras.models.adaptable import AdaptableModel
from uvim_keras.models.checks import check_image, grid_size, pair


LAYOUTS = ("image", "patches")

#: Renamed constructor arguments of `Oracle` and `BaseModel` ({old: new}).
STAGE_I_VIT_RENAMES = {"depth": "num_layers", "dropout": "dropout_rate"}


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}.")


class _StageIViT(AdaptableModel):
    """What the oracle and the base model share: the ViT geometry, the image
    context stem, the position embedding and the encoder stack."""

    def __init__(
        self,
        label_channels,
        input_size=(256, 256),
        patch_size=(8, 8),
        code_len=256,
        codeword_dim=768,
        width=768,
        num_layers=6,
        num_heads=12,
        mlp_dim=3072,
        posemb="learn",
        bottleneck_resize=True,
        with_image_ctx=True,
        dropout_rate=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.label_channels = dict(label_channels)
        self.input_size = pair(input_size, "input_size")
        self.patch_size = pair(patch_size, "patch_size")
        self.grid_size = grid_size(self.input_size, self.patch_size)
        self.code_len = int(code_len)
        self.codeword_dim = int(codeword_dim)
        self.width = int(width)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.posemb = posemb
        self.bottleneck_resize = bool(bottleneck_resize)
        self.with_image_ctx = bool(with_image_ctx)
        self.dropout_rate = float(dropout_rate)
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        if self.bottleneck_resize:
            side = int(round(self.code_len**0.5))
            if side * side != self.code_len:
                raise ValueError(
                    f"code_len={self.code_len} must be a square number with "
                    "bottleneck_resize=True (the code is an l x l grid)."
                )
            self.code_grid = (side, side)
        self.image_embedding = (
            PatchEmbedding(self.width, self.patch_size, name="image_embedding",
                           dtype=self.dtype_policy)
            if self.with_image_ctx else None
        )
        self.position_embedding = PositionEmbedding(
            posemb, self.grid_size, name="posemb", dtype=self.dtype_policy)
        self.encoder = TransformerEncoder(
            self.num_layers, self.num_heads, self.mlp_dim, self.dropout_rate, name="transformer",
            dtype=self.dtype_policy,
        )

    def _build_trunk(self):
        tokens = (None, self.num_tokens, self.width)
        if self.image_embedding is not None:
            self.image_embedding.build((None, *self.input_size, 3))
        self.position_embedding.build(tokens)
        self.encoder.build(tokens)

    def _add_image(self, x, image):
        if self.image_embedding is None:
            return x
        if image is None:
            raise ValueError(
                f"image is None, but this {type(self).__name__} was built with "
                "with_image_ctx=True; pass the image."
            )
        check_image(image, self.input_size)
        return x + self.image_embedding(ops.cast(image, x.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "label_channels": self.label_channels,
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "code_len": self.code_len,
            "codeword_dim": self.codeword_dim,
            "width": self.width,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "posemb": self.posemb,
            "bottleneck_resize": self.bottleneck_resize,
            "with_image_ctx": self.with_image_ctx,
            "dropout_rate": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(**STAGE_I_VIT_RENAMES)
class Oracle(_StageIViT):
    """Restricted oracle Ω: sees the (encoded) label and emits code vectors.

    Label keys are cut into patches and embedded by one stem each (summed);
    with `with_image_ctx` the image's patch embedding is added; a ViT encoder
    runs over the grid; the tokens are brought to `code_len` by a linear resize
    (`bottleneck_resize=True`) or a learned matrix; a dense head maps them to
    `codeword_dim`. The output (B, code_len, codeword_dim) is continuous: the
    `VectorQuantizer` standardises and quantises it.

    `call(labels, image=None, layout="image")`: labels {key: (B, H, W, c)}
    encoded labels (e.g. one-hot; `layout="patches"`: already cut into
    patches, (B, G, c, P)), image (B, H, W, 3) in [-1, 1] when
    `with_image_ctx` -> (B, code_len, codeword_dim).

    Args:
      label_channels: dict. {label key: channels} of the encoded labels, in
        order (one stem per key; a task's `label_channels`).
      input_size: int or (int, int). Image and label size (H, W). Defaults
        to `(256, 256)`.
      patch_size: int or (int, int). The ViT's patch (ph, pw); H and W must
        divide by it. Defaults to `(8, 8)`.
      code_len: int. Words in the guiding code (a square number with
        `bottleneck_resize`). Defaults to `256`.
      codeword_dim: int. Dimension of a code vector. Defaults to `768`.
      width: int. The ViT's width. Defaults to `768`.
      num_layers: int. Encoder blocks of the ViT. Defaults to `6`. Formerly
        `depth` (still accepted).
      num_heads: int. Attention heads; the width must divide by it. Defaults
        to `12`.
      mlp_dim: int. Hidden width of the MLPs. Defaults to `3072`.
      posemb: str. `"learn"` or `"sincos2d"` position embedding. Defaults to
        `"learn"`.
      bottleneck_resize: bool. True: the token grid and the code grid are
        linked by a fixed linear resize (`TokenResize`); False: by a learned
        matrix (`TokenMixing`). Defaults to `True`.
      with_image_ctx: bool. Whether the image's patch embedding is added to
        the tokens (then `call` needs the image). Defaults to `True`.
      dropout_rate: float. Dropout rate of the encoder blocks. Defaults to
        `0.0`. Formerly `dropout` (still accepted).
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> oracle = Oracle({"depth": 16}, input_size=32, patch_size=8, code_len=16,
    ...                 codeword_dim=16, width=32, num_layers=1, num_heads=2, mlp_dim=64)
    >>> z = oracle({"depth": keras.ops.ones((2, 32, 32, 16))},
    ...            image=keras.ops.zeros((2, 32, 32, 3)))  # (2, 16, 16)
    """

    def __init__(self, label_channels, **kwargs):
        super().__init__(label_channels, **kwargs)
        policy = self.dtype_policy
        self.stems = [PatchStem(self.width, name=f"stem_{k}", dtype=policy)
                      for k in self.label_channels]
        self.bottleneck = (
            TokenResize(self.grid_size, self.code_grid, name="bottleneck", dtype=policy)
            if self.bottleneck_resize
            else TokenMixing(self.num_tokens, self.code_len, name="bottleneck", dtype=policy)
        )
        self.head = keras.layers.Dense(self.codeword_dim, name="head", dtype=policy)
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        p = self.patch_size[0] * self.patch_size[1]
        for stem, c in zip(self.stems, self.label_channels.values()):
            stem.build((None, self.num_tokens, c, p))
        self._build_trunk()
        self.bottleneck.build((None, self.num_tokens, self.width))
        self.head.build((None, self.code_len, self.width))
        self.built = True

    def call(self, labels, image=None, training=None, layout="image"):
        """labels: {key: encoded labels (e.g. one-hot)}, (B, H, W, channels)
        with `layout="image"` or already cut into patches, (B, G, channels,
        P), with `layout="patches"`."""
        _check_layout(layout)
        missing = set(self.label_channels) - set(labels)
        if missing:
            raise ValueError(
                f"labels is missing keys {sorted(missing)}; expected {list(self.label_channels)}."
            )
        x = 0
        for stem, key in zip(self.stems, self.label_channels):
            patches = labels[key] if layout == "patches" else patchify(labels[key], self.patch_size)
            x = x + stem(patches)
        x = self._add_image(x, image)
        x = self.encoder(self.position_embedding(x), training=training)
        return self.head(self.bottleneck(x))


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(**STAGE_I_VIT_RENAMES)
class BaseModel(_StageIViT):
    """Base model f(x, z): reconstructs the label from a guiding code.

    Input: code vectors (B, code_len, codeword_dim), or integer codes
    (B, code_len) together with `codewords` (the quantizer's
    `codewords()`), plus the image when `with_image_ctx`. A dense stem maps
    the code to the width, a linear resize (or learned matrix) brings it to
    the token grid, the image's patch embedding is added, a ViT encoder runs
    and one head per output key gives per-patch logits. Output:
    {key: logits (B, H, W, channels)}, or (B, G, channels, P) per patch
    with `layout="patches"`. As in big_vision, its encoder always runs
    deterministically (no dropout, even in training).

    Args:
      label_channels: dict. {output key: channels} of the logits, in order
        (one `PatchHead` per key; a task's `label_channels`).
      input_size: int or (int, int). Image and label size (H, W). Defaults
        to `(256, 256)`.
      patch_size: int or (int, int). The ViT's patch (ph, pw); H and W must
        divide by it. Defaults to `(8, 8)`.
      code_len: int. Words in the guiding code (a square number with
        `bottleneck_resize`). Defaults to `256`.
      codeword_dim: int. Dimension of a code vector. Defaults to `768`.
      width: int. The ViT's width. Defaults to `768`.
      num_layers: int. Encoder blocks of the ViT. Defaults to `6`. Formerly
        `depth` (still accepted).
      num_heads: int. Attention heads; the width must divide by it. Defaults
        to `12`.
      mlp_dim: int. Hidden width of the MLPs. Defaults to `3072`.
      posemb: str. `"learn"` or `"sincos2d"` position embedding. Defaults to
        `"learn"`.
      bottleneck_resize: bool. True: the token grid and the code grid are
        linked by a fixed linear resize (`TokenResize`); False: by a learned
        matrix (`TokenMixing`). Defaults to `True`.
      with_image_ctx: bool. Whether the image's patch embedding is added to
        the tokens (then `call` needs the image). Defaults to `True`.
      dropout_rate: float. Dropout rate of the encoder blocks; kept for the
        config, but unused: this encoder always runs deterministically.
        Defaults to `0.0`. Formerly `dropout` (still accepted).
      head_zero_init: bool. Zero-initialise the heads' kernels
        (big_vision's `head_zeroinit`). Defaults to `True`.
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> f = BaseModel({"depth": 16}, input_size=32, patch_size=8, code_len=16,
    ...               codeword_dim=16, width=32, num_layers=2, num_heads=2, mlp_dim=64)
    >>> logits = f(keras.ops.zeros((2, 16, 16)), image=keras.ops.zeros((2, 32, 32, 3)))
    """

    def __init__(self, label_channels, head_zero_init=True, **kwargs):
        super().__init__(label_channels, **kwargs)
        self.head_zero_init = bool(head_zero_init)
        policy = self.dtype_policy
        self.stem = keras.layers.Dense(self.width, name="code_stem", dtype=policy)
        self.unbottleneck = (
            TokenResize(self.code_grid, self.grid_size, name="unbottleneck", dtype=policy)
            if self.bottleneck_resize
            else TokenMixing(self.code_len, self.num_tokens, name="unbottleneck", dtype=policy)
        )
        p = self.patch_size[0] * self.patch_size[1]
        self.heads = [
            PatchHead(c, p, zero_init=self.head_zero_init, name=f"head_{k}", dtype=policy)
            for k, c in self.label_channels.items()
        ]
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        self.stem.build((None, self.code_len, self.codeword_dim))
        self.unbottleneck.build((None, self.code_len, self.width))
        self._build_trunk()
        for head in self.heads:
            head.build((None, self.num_tokens, self.width))
        self.built = True

    def call(self, code, image=None, codewords=None, training=None, layout="image"):
        """Logits {key: (B, H, W, channels)}, or per patch (B, G, channels, P)
        with `layout="patches"`."""
        _check_layout(layout)
        if len(code.shape) == 2:
            if codewords is None:
                raise ValueError(
                    "code has shape (batch, code_len) (integer codes) but no codewords "
                    "were given; pass codewords=quantizer.codewords()."
                )
            code = ops.take(codewords, ops.cast(code, "int32"), axis=0)
        if len(code.shape) != 3 or tuple(code.shape[1:]) != (self.code_len, self.codeword_dim):
            raise ValueError(
                f"code has shape {tuple(code.shape)}; expected (batch, {self.code_len}, "
                f"{self.codeword_dim}) vectors or (batch, {self.code_len}) integer codes."
            )
        x = self.stem(ops.cast(code, self.compute_dtype))
        x = self.unbottleneck(x)
        x = self._add_image(x, image)
        # As in big_vision, the base model's transformer is always run
        # deterministically (its decoder is called without `deterministic`).
        x = self.encoder(self.position_embedding(x), training=False)
        logits = {key: head(x) for head, key in zip(self.heads, self.label_channels)}
        return logits if layout == "patches" else self.image_layout(logits)

    def image_layout(self, patch_logits):
        """{key: (B, G, c, P)} per-patch logits -> {key: (B, H, W, c)}."""
        return {k: unpatchify(v, self.patch_size, self.grid_size) for k, v in patch_logits.items()}

    def get_config(self):
        return {**super().get_config(), "head_zero_init": self.head_zero_init}
