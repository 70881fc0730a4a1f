"""Keras 3 layers of UViM (keras.ops only, every backend)."""

from uvim_keras.layers.bottleneck import TokenMixing, TokenResize, linear_resize_matrix
from uvim_keras.layers.code_dropout import CodeDropout
from uvim_keras.layers.embeddings import PatchEmbedding, PositionEmbedding, sincos2d_posemb
from uvim_keras.layers.patches import PatchHead, PatchStem, patchify, unpatchify
from uvim_keras.layers.transformer import (
    DecoderBlock,
    EncoderBlock,
    MlpBlock,
    MultiHeadDotProductAttention,
    TransformerEncoder,
)
from uvim_keras.layers.vector_quantizer import VectorQuantizer, split_dead_codewords, standardize
