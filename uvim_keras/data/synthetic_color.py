"""Synthetic colorization with genuinely ambiguous colours.

Each image shows 1-5 discs and rotated squares over a background. Every
object takes one hue of `COLOR_PALETTE` uniformly at random; all palette
colours have the **same luminance** (`luminance`, BT.601), and the object's
brightness (a per-object level times a soft bright-centre shading) scales
all palette colours alike, so the grey input cannot tell which hue an
object has (a darker rim, the same for every hue, keeps every object
visible in the grey image). A per-pixel regression model can at best predict the palette
mean (a greyish pink) for objects, while a model that samples a guiding
code can commit to one plausible hue per object. The background is not
ambiguous: a vertical blend from a blue-grey tint (top) to a sand tint
(bottom) with random brightness and soft brightness noise.

The ``image`` is the grey version of the ``labels``:
``image[..., c] == luminance(labels)`` for c = 0, 1, 2 (exactly, in float32).

Example:

>>> data = make_colorization_shapes(4, size=64, seed=0)
>>> data["image"].shape, data["labels"].shape
((4, 64, 64, 3), (4, 64, 64, 3))
>>> bool(np.all(data["image"][..., 0] == luminance(data["labels"])))
True
"""

import numpy as np

from uvim_keras.data.synthetic_common import (
    LUMA_WEIGHTS, check_common, check_int, check_range, example_rng, luminance,
    pixel_grid, render_in_chunks, stack_scenes, to_signed, upsample)

DISC, SQUARE = 0, 1
DEFAULT_MAX_OBJECTS = 5
#: Luminance shared by all palette colours (RGB in [0, 1]).
PALETTE_LUMINANCE = 0.5
#: Hue names of the palette, in order.
PALETTE_NAMES = ("red", "green", "blue", "magenta")
_PRIMARIES = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], np.float64)
_GAMUT = (0.08, 0.92)  # palette channels stay inside, so scaling never clips
_TOP_TINT = np.array([0.82, 0.98, 1.2])  # background tints, luminance ~1
_BOTTOM_TINT = np.array([1.18, 0.98, 0.78])
_SALT = 303
_NOISE_GRID = 6
_RIM = 0.84  # objects get a darker rim beyond this fraction of their radius


def _equal_luminance_palette(primaries, level, gamut):
    """Colours ``level + s_h * (p_h - Y(p_h))``: luminance exactly `level`;
    s_h is the largest scale keeping every channel inside `gamut`."""
    y = primaries @ np.array(LUMA_WEIGHTS)
    chroma = primaries - y[:, None]
    lo, hi = gamut
    with np.errstate(divide="ignore"):
        room = np.where(chroma > 0, (hi - level) / chroma,
                        np.where(chroma < 0, (lo - level) / chroma, np.inf))
    return level + room.min(axis=1, keepdims=True) * chroma


#: (4, 3) RGB in [0, 1]; every row has luminance PALETTE_LUMINANCE.
COLOR_PALETTE = _equal_luminance_palette(_PRIMARIES, PALETTE_LUMINANCE, _GAMUT)


def sample_colorization_scene(seed, index, min_objects=1, max_objects=DEFAULT_MAX_OBJECTS):
    """Parameters of colorization example `index` (depends only on seed, index).

    Objects are padded to `max_objects` (``obj_valid``), in drawing order;
    ``obj_hue`` indexes `COLOR_PALETTE`; ``obj_level`` scales its brightness.
    """
    rng = example_rng(seed, _SALT, index)
    n = int(rng.integers(min_objects, max_objects + 1))
    k = max_objects
    return {
        "bg_levels": rng.uniform(0.3, 0.75, 2),
        "bg_noise": rng.random((_NOISE_GRID, _NOISE_GRID)),
        "obj_valid": np.arange(k) < n,
        "obj_shape": rng.integers(2, size=k).astype(np.int32),
        "obj_hue": rng.integers(len(COLOR_PALETTE), size=k).astype(np.int32),
        "obj_centre": rng.uniform(0.1, 0.9, (k, 2)),
        "obj_radius": rng.uniform(0.08, 0.2, k),
        "obj_angle": rng.uniform(0, np.pi / 2, k),
        "obj_level": rng.uniform(0.8, 1.08, k),
    }


def sample_colorization_scenes(num_examples, seed=0, start=0, min_objects=1,
                               max_objects=DEFAULT_MAX_OBJECTS):
    """Stacked `sample_colorization_scene` of examples start, ..., start + num - 1."""
    num_examples, _, seed, start = check_common(num_examples, 1, seed, start)
    max_objects = check_int("max_objects", max_objects)
    min_objects = check_int("min_objects", min_objects)
    check_range("min_objects", min_objects, "max_objects", max_objects)
    return stack_scenes([sample_colorization_scene(seed, i, min_objects, max_objects)
                         for i in range(start, start + num_examples)])


def _background(scenes, size):
    """Unambiguous background RGB in [0, 1] (B, H, W, 3)."""
    rows, _ = pixel_grid(size)
    t = rows.astype(np.float64)[None]
    lo, hi = scenes["bg_levels"][:, 0, None, None], scenes["bg_levels"][:, 1, None, None]
    level = (lo * (1 - t) + hi * t) * (0.85 + 0.3 * upsample(scenes["bg_noise"], size))
    tint = _TOP_TINT * (1 - t[..., None]) + _BOTTOM_TINT * t[..., None]
    return np.clip(tint * level[..., None], 0, 1)


def render_colorization(scenes, size=64):
    """Renders stacked scene parameters -> {"image", "labels"} (module doc)."""
    size = check_int("size", size)
    rows, cols = (g.astype(np.float64) for g in pixel_grid(size))
    rgb = _background(scenes, size)
    for k in range(scenes["obj_valid"].shape[1]):  # painter's algorithm
        sel = np.nonzero(scenes["obj_valid"][:, k])[0]
        col = lambda a: a[sel, k, None, None]  # noqa: E731
        dv, du = rows - col(scenes["obj_centre"][..., 0]), cols - col(scenes["obj_centre"][..., 1])
        cos, sin = np.cos(col(scenes["obj_angle"])), np.sin(col(scenes["obj_angle"]))
        x, y = (cos * du + sin * dv) / col(scenes["obj_radius"]), \
            (cos * dv - sin * du) / col(scenes["obj_radius"])
        norm = np.where(col(scenes["obj_shape"]) == DISC, np.sqrt(x * x + y * y),
                        np.maximum(np.abs(x), np.abs(y)) / 0.886)
        rim = np.where(norm > _RIM, 0.65, 1.0)  # outline: visible in grey, hue-blind
        shade = col(scenes["obj_level"]) * rim * (0.9 + 0.1 * (1 - np.minimum(norm, 1) ** 2))
        colour = COLOR_PALETTE[scenes["obj_hue"][sel, k]][:, None, None] * shade[..., None]
        rgb[sel] = np.where((norm <= 1)[..., None], colour, rgb[sel])
    labels = to_signed(rgb)
    grey = luminance(labels)
    return {"image": np.repeat(grey[..., None], 3, axis=-1), "labels": labels}


def make_colorization_shapes(num_examples, size=64, seed=0, start=0, min_objects=1,
                             max_objects=DEFAULT_MAX_OBJECTS):
    """Procedural colorization dataset as numpy arrays.

    Args:
        num_examples: number of examples (positive).
        size: image side in pixels (square images).
        seed: non-negative integer; example i depends only on (seed, i).
        start: index of the first example.
        min_objects, max_objects: objects per image (1 <= min <= max).

    Returns:
        {"image": float32 (N, size, size, 3) grey in [-1, 1] (luminance of
         the labels, replicated), "labels": float32 (N, size, size, 3) RGB
         in [-1, 1]}.

    Use ``ColorizationTask()``.

    >>> make_colorization_shapes(2, size=32)["image"].shape
    (2, 32, 32, 3)
    """
    size = check_int("size", size)
    scenes = sample_colorization_scenes(num_examples, seed, start, min_objects, max_objects)
    return render_in_chunks(lambda s: render_colorization(s, size), scenes,
                            2 ** 20 // (size * size))
