"""Helpers shared by the synthetic dataset generators.

Every generator follows the same pattern so that example ``i`` depends only
on ``(seed, i)``:

1. ``sample_*_scenes`` draws a small per-example parameter dict from its own
   ``numpy.random.Generator`` seeded with ``(seed, task_salt, i)``
   (`example_rng`), padded to fixed shapes and stacked over the examples;
2. ``render_*`` turns the stacked parameters into images and labels with
   vectorized, purely element-wise numpy (no BLAS reductions), so a row's
   values do not depend on which other rows share its batch.
"""

import numpy as np

#: ITU-R BT.601 luma weights (R, G, B) used for every grey image.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(rgb):
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` over the last axis.

    Linear with weights summing to 1, so it maps [0, 1] RGB to [0, 1] and
    [-1, 1] RGB to [-1, 1] alike (``luminance(2c - 1) == 2 luminance(c) - 1``).
    The result keeps the input's float dtype and drops the last axis.

    >>> round(float(luminance(np.array([1.0, 1.0, 1.0]))), 6)
    1.0
    >>> round(float(luminance(np.array([1.0, 0.0, 0.0]))), 3)
    0.299
    """
    rgb = np.asarray(rgb)
    if not np.issubdtype(rgb.dtype, np.floating):
        rgb = rgb.astype(np.float32)
    r, g, b = (np.asarray(w, rgb.dtype) for w in LUMA_WEIGHTS)
    return r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def check_int(name, value, minimum=1):
    """``int(value)``; ValueError naming `name` unless an integer >= minimum."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r}; expected {kind}.")
    return int(value)


def check_range(name_lo, lo, name_hi, hi):
    """ValueError unless lo <= hi (both already validated integers)."""
    if lo > hi:
        raise ValueError(f"{name_lo}={lo} > {name_hi}={hi}; expected {name_lo} <= {name_hi}.")


def check_common(num_examples, size, seed, start):
    """Validates the arguments every generator takes; returns them as ints."""
    return (check_int("num_examples", num_examples), check_int("size", size),
            check_int("seed", seed, 0), check_int("start", start, 0))


def example_rng(seed, salt, index):
    """The Generator of example `index`: depends only on (seed, salt, index)."""
    return np.random.default_rng([int(seed), int(salt), int(index)])


def stack_scenes(scenes):
    """List of per-example dicts of equal-shape arrays -> dict of stacked arrays."""
    return {k: np.stack([s[k] for s in scenes]) for k in scenes[0]}


def scene_slice(scenes, sl):
    """The examples `sl` (a slice) of stacked scenes."""
    return {k: v[sl] for k, v in scenes.items()}


def num_scenes(scenes):
    return len(next(iter(scenes.values())))


def chunk_slices(n, per_chunk):
    """Slices covering range(n) in chunks of at most `per_chunk`."""
    per_chunk = max(1, int(per_chunk))
    return [slice(i, min(n, i + per_chunk)) for i in range(0, n, per_chunk)]


def render_in_chunks(render, scenes, per_chunk):
    """Applies `render` (stacked scenes -> dict of arrays) chunk by chunk.

    Rendering is per-example element-wise, so chunking only bounds memory;
    results are written into preallocated outputs.
    """
    out = None
    for sl in chunk_slices(num_scenes(scenes), per_chunk):
        part = render(scene_slice(scenes, sl))
        if out is None:
            n = num_scenes(scenes)
            out = {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in part.items()}
        for k, v in part.items():
            out[k][sl] = v
    return out


def pixel_grid(size):
    """(rows, cols) of pixel-centre coordinates in [0, 1], each (size, size).

    Pixel (r, c) has centre ``((r + 0.5) / size, (c + 0.5) / size)``.
    """
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(t, t, indexing="ij")


def upsample(grid, size):
    """Bilinear upsampling of (N, g, g) value noise to (N, size, size).

    Element-wise gathers and lerps only (exact per example). Grid node j sits
    at ``j / (g - 1)`` of the image, so the field is smooth and spans it.
    """
    g = grid.shape[-1]
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (g - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, g - 2)
    w = (pos - i0).astype(np.float32)
    rows = grid[:, i0] * (1 - w)[None, :, None] + grid[:, i0 + 1] * w[None, :, None]
    return rows[:, :, i0] * (1 - w) + rows[:, :, i0 + 1] * w


def hsv_to_rgb(h, s, v):
    """Vectorized HSV -> RGB; h in [0, 1) (wraps), s, v in [0, 1]; (..., 3)."""
    h, s, v = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (h, s, v)))
    k = np.stack([5.0, 3.0, 1.0], axis=-1)
    x = np.mod(k + (np.mod(h, 1.0) * 6.0)[..., None], 6.0)
    ramp = np.clip(np.minimum(x, 4.0 - x), 0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def to_signed(x01):
    """[0, 1] image -> float32 in [-1, 1] (clipped)."""
    return (np.clip(x01, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)
