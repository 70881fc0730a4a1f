"""Synthetic panoptic segmentation: textured sky/ground "stuff" + shape "things".

Each image shows two stuff classes split by a random, possibly sloped
horizon, and 1-6 shapes (disc, square, triangle) drawn in order, later ones
over earlier ones. Appearance cues per class (with jitter per instance):

============  =====  =====  ================================================
class         id     thing  look
============  =====  =====  ================================================
void          0      -      (unused by the generator; reserved)
sky           1      no     blue vertical gradient + soft white clouds
ground        2      no     olive/green, grainy, patchy, perspective furrows
disc          3      yes    red/orange, smooth, bright centre
square        4      yes    yellow, rotated, stripes along one side
triangle      5      yes    violet, rotated, speckled
============  =====  =====  ================================================

About half of the objects after the first are placed against an earlier
object of the same class (touching or overlapping), so neighbouring
instances of one class often merge in colour and only the shape, the
bright-centre shading and the texture phase tell them apart.

Labels follow the project's panoptic convention, int32 (N, H, W, 2):
channel 0 the semantic class (`PANOPTIC_CATEGORIES`, 0 = void), channel 1
the instance id. Every segment -- each thing instance and each visible stuff
region (sky, ground) -- gets an id, numbered 1, 2, ... in **raster order of
the centre of its visible mask**, as big_vision's COCO-panoptic pipeline does
(`make_canonical`); UViM's output rule (each instance takes the majority
class) needs distinct ids for stuff regions too. The centre is the mean
(row, col) of the segment's visible pixels rounded to the nearest pixel
(``floor(mean + 0.5)``), and segments are sorted by ``row * width + col`` of
that pixel (ties: drawing order, stuff last). Id 0 is never used (no void). Instances with
fewer than `min_pixels` visible pixels are removed from image and labels
before numbering (removing one can only uncover others).

Example:

>>> data = make_panoptic_shapes(8, size=64, seed=0)
>>> data["image"].shape, data["labels"].shape, data["labels"].dtype
((8, 64, 64, 3), (8, 64, 64, 2), dtype('int32'))
>>> int(data["labels"][..., 0].max()) < PANOPTIC_NUM_CLASSES
True
"""

import numpy as np

from uvim_keras.data.synthetic_common import (
    check_common, check_int, check_range, example_rng, hsv_to_rgb, pixel_grid,
    render_in_chunks, stack_scenes, to_signed, upsample)

VOID, SKY, GROUND, DISC, SQUARE, TRIANGLE = range(6)
STUFF_CLASSES = (SKY, GROUND)
THING_CLASSES = (DISC, SQUARE, TRIANGLE)

#: Category spec for panoptic quality (ids as in the labels; 0 is void).
PANOPTIC_CATEGORIES = [
    {"id": SKY, "name": "sky", "isthing": 0, "color": [110, 170, 230]},
    {"id": GROUND, "name": "ground", "isthing": 0, "color": [110, 140, 60]},
    {"id": DISC, "name": "disc", "isthing": 1, "color": [230, 70, 40]},
    {"id": SQUARE, "name": "square", "isthing": 1, "color": [240, 210, 50]},
    {"id": TRIANGLE, "name": "triangle", "isthing": 1, "color": [150, 80, 200]},
]
#: Semantic channels including void (PanopticTask's num_classes).
PANOPTIC_NUM_CLASSES = 6
#: Default maximum number of shapes drawn per image.
DEFAULT_MAX_OBJECTS = 6

_SALT = 101  # separates the panoptic random streams from other tasks'
# HSV ranges (lo, hi) of hue, saturation, value per thing class.
_THING_HSV = {
    DISC: ((-0.02, 0.06), (0.65, 0.9), (0.75, 0.95)),
    SQUARE: ((0.12, 0.17), (0.6, 0.85), (0.8, 0.97)),
    TRIANGLE: ((0.74, 0.84), (0.45, 0.75), (0.6, 0.85)),
}
_CLOUD_GRID, _PATCH_GRID = 5, 9
_SQUARE_HALF = 0.886  # square half-side / radius: equal area to the disc
_TRIANGLE_CIRCUM = 1.4  # triangle circumradius / radius


def _uniform(rng, ranges, shape=()):
    """Uniform draws, one per (lo, hi) row of `ranges`: shape + (len(ranges),)."""
    lo, hi = np.asarray(ranges, np.float64).T
    return lo + (hi - lo) * rng.random(shape + (len(lo),))


def _place_objects(rng, n, max_objects):
    """Classes, centres (row, col) and radii of `n` objects (padded).

    About half of the objects after the first copy the class of an earlier
    object and lean against it (touching or overlapping it).
    """
    k_all = max_objects
    radius = rng.uniform(0.07, 0.16, k_all)
    free_cls = np.asarray(THING_CLASSES)[rng.integers(len(THING_CLASSES), size=k_all)]
    free_centre = _uniform(rng, [(0.15, 0.9), (0.1, 0.9)], (k_all,))
    lean = rng.random(k_all) < 0.5
    partner = (rng.random(k_all) * np.arange(k_all)).astype(np.int64)
    angle = rng.uniform(0, 2 * np.pi, k_all)
    gap = rng.uniform(0.65, 1.05, k_all)
    cls, centre = free_cls.astype(np.int32), free_centre
    for k in range(1, n):
        if lean[k]:
            j = partner[k]
            cls[k] = cls[j]
            step = (radius[j] + radius[k]) * gap[k]
            centre[k] = centre[j] + step * np.array([np.sin(angle[k]), np.cos(angle[k])])
    cls[n:] = 0
    return cls, np.clip(centre, 0.05, 0.95), radius


def sample_panoptic_scene(seed, index, size=64, min_objects=1,
                          max_objects=DEFAULT_MAX_OBJECTS):
    """Parameters of panoptic example `index` (depends only on seed, index).

    Returns a dict of arrays with fixed shapes (objects padded to
    `max_objects`; ``obj_valid`` marks the drawn ones, in drawing order).
    Coordinates are fractions of the image side, centres are (row, col),
    colours are HSV in [0, 1] (hue wraps).
    """
    rng = example_rng(seed, _SALT, index)
    n = int(rng.integers(min_objects, max_objects + 1))
    cls, centre, radius = _place_objects(rng, n, max_objects)
    hsv = np.zeros((max_objects, 3))
    for c in THING_CLASSES:  # one draw per class keeps the stream fixed
        hsv = np.where((cls == c)[:, None], _uniform(rng, _THING_HSV[c], (max_objects,)), hsv)
    return {
        "horizon": _uniform(rng, [(0.3, 0.6), (-0.35, 0.35)]),
        "sky_top_hsv": _uniform(rng, [(0.57, 0.62), (0.5, 0.7), (0.75, 0.9)]),
        "sky_bottom_hsv": _uniform(rng, [(0.55, 0.6), (0.12, 0.3), (0.9, 1.0)]),
        "ground_hsv": _uniform(rng, [(0.2, 0.33), (0.35, 0.6), (0.42, 0.62)]),
        "furrows": _uniform(rng, [(0.25, 0.5), (0, 2 * np.pi)]),
        "clouds": rng.random((_CLOUD_GRID, _CLOUD_GRID)),
        "patches": rng.random((_PATCH_GRID, _PATCH_GRID)),
        "grain": rng.standard_normal((size, size), np.float32),
        "obj_valid": np.arange(max_objects) < n,
        "obj_class": cls,
        "obj_centre": centre,
        "obj_radius": radius,
        "obj_angle": rng.uniform(0, 2 * np.pi, max_objects),
        "obj_hsv": hsv,
        "obj_texture": _uniform(rng, [(1.2, 2.2), (0, 2 * np.pi)], (max_objects,)),
    }


def sample_panoptic_scenes(num_examples, size=64, seed=0, start=0, min_objects=1,
                           max_objects=DEFAULT_MAX_OBJECTS):
    """Stacked `sample_panoptic_scene` of examples start, ..., start + num - 1."""
    num_examples, size, seed, start = check_common(num_examples, size, seed, start)
    max_objects = check_int("max_objects", max_objects)
    min_objects = check_int("min_objects", min_objects)
    check_range("min_objects", min_objects, "max_objects", max_objects)
    return stack_scenes([
        sample_panoptic_scene(seed, i, size, min_objects, max_objects)
        for i in range(start, start + num_examples)])


# -- geometry ---------------------------------------------------------------
# Per-object work runs on the flat list of drawn objects (M = sum of
# obj_valid), so padding slots cost nothing.


def _float32(scenes):
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in scenes.items()}


def _shape_norms(scenes, b_idx, k_idx, size):
    """Shape "norm" (M, H, W) of each drawn object (<= 1 inside; 0 at the
    centre) and its local x coordinate in radii (for stripes)."""
    rows, cols = pixel_grid(size)
    per = lambda key: scenes[key][b_idx, k_idx]  # noqa: E731
    col3 = lambda a: a[:, None, None]  # noqa: E731
    centre, r = per("obj_centre"), col3(per("obj_radius"))
    angle, cls = per("obj_angle"), per("obj_class")
    dv, du = rows - col3(centre[:, 0]), cols - col3(centre[:, 1])
    cos, sin = col3(np.cos(angle)), col3(np.sin(angle))
    x, y = (cos * du + sin * dv) / r, (cos * dv - sin * du) / r
    norm = np.empty_like(x)
    disc, square, tri = (cls == DISC), (cls == SQUARE), (cls == TRIANGLE)
    norm[disc] = np.sqrt(x[disc] ** 2 + y[disc] ** 2)
    norm[square] = np.maximum(np.abs(x[square]), np.abs(y[square])) / np.float32(_SQUARE_HALF)
    edges = np.pi / 2 + 2 * np.pi / 3 * np.arange(3)  # outward edge normals
    xt, yt = x[tri], y[tri]
    dist = [xt * np.float32(np.cos(a)) + yt * np.float32(np.sin(a)) for a in edges]
    norm[tri] = np.maximum(np.maximum(dist[0], dist[1]), dist[2]) / np.float32(_TRIANGLE_CIRCUM / 2)
    return norm, x


def _top_object(inside):
    """Index (B, H, W) of the last object covering each pixel, -1 if none."""
    top = np.full(inside.shape[:1] + inside.shape[2:], -1, np.int64)
    for k in range(inside.shape[1]):
        top = np.where(inside[:, k], k, top)
    return top


def _visible(inside, valid, min_pixels):
    """Drops objects with < min_pixels visible pixels until none is left.

    Returns (top object map, final valid flags, per-object visible masks).
    """
    k_ids = np.arange(inside.shape[1])[None, :, None, None]
    while True:
        top = _top_object(inside & valid[:, :, None, None])
        masks = top[:, None] == k_ids
        drop = valid & (masks.sum(axis=(2, 3)) < min_pixels)
        if not drop.any():
            return top, valid, masks
        valid = valid & ~drop


def _instance_ids(masks, valid):
    """Ids (B, K): 1.. in raster order of the visible centres, 0 if invalid."""
    b, k, h, w = masks.shape
    count = masks.sum(axis=(2, 3), dtype=np.int64)
    sum_r = masks.sum(axis=3, dtype=np.int64) @ np.arange(h)  # exact integers
    sum_c = masks.sum(axis=2, dtype=np.int64) @ np.arange(w)
    safe = np.maximum(count, 1)
    row = (2 * sum_r + safe) // (2 * safe)  # floor(mean + 0.5), exactly
    col = (2 * sum_c + safe) // (2 * safe)
    key = np.where(valid, row * w + col, h * w) * k + np.arange(k)
    order = np.argsort(key, axis=1, kind="stable")
    ids = np.zeros((b, k), np.int32)
    np.put_along_axis(ids, order, np.arange(1, k + 1, dtype=np.int32)[None], axis=1)
    return np.where(valid, ids, 0)


# -- appearance ---------------------------------------------------------------


def _background(scenes, size):
    """Sky/ground RGB in [0, 1] (B, H, W, 3) and the sky mask (B, H, W)."""
    rows, cols = pixel_grid(size)
    col3 = lambda a: a[:, None, None]  # noqa: E731
    horizon = col3(scenes["horizon"][:, 0]) + col3(scenes["horizon"][:, 1]) * (cols - 0.5)
    sky = rows < horizon
    t = np.clip(rows / horizon, 0, 1)[..., None]
    top, bottom, ground = (col3(hsv_to_rgb(*scenes[k].T).astype(np.float32))
                           for k in ("sky_top_hsv", "sky_bottom_hsv", "ground_hsv"))
    cloud = np.clip((upsample(scenes["clouds"], size) - 0.45) * 2.5, 0, 0.7)[..., None]
    sky_rgb = (top * (1 - t) + bottom * t) * (1 - cloud) + cloud
    below = np.maximum(rows - horizon, 0)
    freq, phase = col3(scenes["furrows"][:, 0]), col3(scenes["furrows"][:, 1])
    furrow = np.sin(freq / (below + np.float32(0.04)) + phase) * np.clip(below * 5, 0, 1)
    shade = 0.75 + 0.35 * upsample(scenes["patches"], size) + 0.1 * furrow
    ground_rgb = ground * shade[..., None] + 0.07 * scenes["grain"][..., None]
    return np.where(sky[..., None], sky_rgb, ground_rgb), sky


def _object_shading(scenes, b_idx, k_idx, norm, x):
    """Brightness (M, H, W) of each drawn object: bright centre x texture."""
    cls = scenes["obj_class"][b_idx, k_idx]
    freq, phase = (scenes["obj_texture"][b_idx, k_idx, i][:, None, None] for i in (0, 1))
    shade = 0.8 + 0.22 * (1 - np.minimum(norm, 1) ** 2)
    square, tri = cls == SQUARE, cls == TRIANGLE
    shade[square] *= 1 + 0.2 * np.sin(np.float32(np.pi) * freq[square] * x[square] + phase[square])
    shade[tri] *= 1 + 0.22 * scenes["grain"][b_idx[tri]]
    return shade


def _thing_rgb(scenes, b_idx, k_idx, norm, x, bb, kk):
    """RGB (B, H, W, 3) of object kk[b, r, c] of example bb at every pixel."""
    size = kk.shape[-1]
    if not len(b_idx):
        return np.zeros(kk.shape + (3,), np.float32)
    flat = np.zeros(scenes["obj_valid"].shape, np.int64)  # (b, k) -> row of norm
    flat[b_idx, k_idx] = np.arange(len(b_idx))
    rr, cc = np.arange(size)[:, None], np.arange(size)
    shade = _object_shading(scenes, b_idx, k_idx, norm, x)[flat[bb, kk], rr, cc]
    colour = hsv_to_rgb(*scenes["obj_hsv"].transpose(2, 0, 1)).astype(np.float32)
    return colour[bb, kk] * shade[..., None]


def render_panoptic(scenes, size=64, min_pixels=8):
    """Renders stacked scene parameters -> {"image", "labels"} (see module doc)."""
    size = check_int("size", size)
    min_pixels = check_int("min_pixels", min_pixels)
    scenes = _float32(scenes)
    valid = scenes["obj_valid"].astype(bool)
    b_idx, k_idx = np.nonzero(valid)
    norm, x = _shape_norms(scenes, b_idx, k_idx, size)
    inside = np.zeros(valid.shape + (size, size), bool)
    inside[b_idx, k_idx] = norm <= 1
    top, valid, masks = _visible(inside, valid, min_pixels)
    bb, kk, thing = np.arange(len(top))[:, None, None], np.maximum(top, 0), top >= 0
    background, sky = _background(scenes, size)
    # Stuff regions are segments too (as big_vision's COCO pipeline numbers
    # every segment): append the visible sky and ground as two more masks.
    stuff = np.stack([sky & ~thing, ~sky & ~thing], axis=1)
    k = masks.shape[1]
    ids = _instance_ids(np.concatenate([masks, stuff], axis=1),
                        np.concatenate([valid, stuff.any(axis=(2, 3))], axis=1))
    things = _thing_rgb(scenes, b_idx, k_idx, norm, x, bb, kk)
    image = np.where(thing[..., None], things, background)
    semantic = np.where(thing, scenes["obj_class"][bb, kk], np.where(sky, SKY, GROUND))
    stuff_id = np.where(sky, ids[:, k, None, None], ids[:, k + 1, None, None])
    instance = np.where(thing, ids[bb, kk], stuff_id)
    labels = np.stack([semantic, instance], axis=-1).astype(np.int32)
    return {"image": to_signed(image), "labels": labels}


def make_panoptic_shapes(num_examples, size=64, seed=0, start=0, min_objects=1,
                         max_objects=DEFAULT_MAX_OBJECTS, min_pixels=8):
    """Procedural panoptic dataset as numpy arrays.

    Args:
        num_examples: number of examples (positive).
        size: image side in pixels (square images).
        seed: non-negative integer; example i depends only on (seed, i).
        start: index of the first example (e.g. a validation split can use
            ``start=10**6`` or another seed).
        min_objects, max_objects: shapes drawn per image (1 <= min <= max).
        min_pixels: instances with fewer visible pixels are removed.

    Returns:
        {"image": float32 (N, size, size, 3) in [-1, 1],
         "labels": int32 (N, size, size, 2) [semantic class, instance id]}.

    Use ``PanopticTask(num_classes=PANOPTIC_NUM_CLASSES,
    max_instances=max_objects + 3)`` (things + 2 stuff regions + unused 0)
    and `PANOPTIC_CATEGORIES` for PQ.

    >>> make_panoptic_shapes(2, size=32)["labels"].shape
    (2, 32, 32, 2)
    """
    min_pixels = check_int("min_pixels", min_pixels)
    scenes = sample_panoptic_scenes(num_examples, size, seed, start, min_objects, max_objects)
    per_chunk = 2 ** 21 // (scenes["obj_valid"].shape[1] * size * size)
    return render_in_chunks(lambda s: render_panoptic(s, size, min_pixels), scenes, per_chunk)
