"""Synthetic monocular depth: ray-traced rooms with analytic depth.

A pinhole camera (60 degree field of view, square image) stands at the
world origin, ``height`` metres above a floor plane, pitched down and
slightly rolled. The room is the floor (y = -height), a back wall
(z = back), a left and a right wall (x = -left, x = right) and no ceiling;
1-4 spheres and yaw-rotated boxes rest on the floor inside it.

Every pixel's ray (through the pixel centre) is intersected analytically
with all surfaces; the label is the **z-depth** (distance along the
camera's optical axis, as in NYU depth v2) of the nearest hit. The image is
rendered from the same hits: per-surface albedo (a checkered floor whose
tiles shrink with distance, plain walls, coloured objects), Lambertian
shading from a directional light with hard shadows of the objects, and
exponential distance fog towards a fog colour, so depth is visible through
perspective, occlusion, shading, shadows and fog.

All depths lie in about [1.3, 8.7] metres, inside the task's (1e-3, 10).

World axes: x right, y up, z forward (horizontal). `analytic_depth`
recomputes the labels from the scene parameters.

Example:

>>> data = make_depth_scenes(4, size=64, seed=0)
>>> data["image"].shape, data["labels"].shape
((4, 64, 64, 3), (4, 64, 64, 1))
>>> scenes = sample_depth_scenes(4, seed=0)
>>> bool(np.all(analytic_depth(scenes, 64).astype(np.float32) == data["labels"][..., 0]))
True
"""

import numpy as np

from uvim_keras.data.synthetic_common import (
    check_common, check_int, example_rng, hsv_to_rgb, pixel_grid,
    render_in_chunks, stack_scenes, to_signed)

#: Field of view of the camera (degrees, both axes).
FOV_DEGREES = 60.0
#: Depth range of the suggested DepthTask (labels lie well inside it).
MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0
DEFAULT_MAX_OBJECTS = 4
#: Surface ids of `trace_depth_scenes`: room surfaces, then spheres, then boxes.
FLOOR, BACK_WALL, LEFT_WALL, RIGHT_WALL = range(4)

_SALT = 202
_EPS = 1e-9


# -- scene sampling -----------------------------------------------------------


def _place_objects(rng, room, max_objects):
    """Spheres and boxes on the floor, inside the room, not overlapping."""
    back, left, right = room
    tan = np.tan(np.radians(FOV_DEGREES / 2))
    n = int(rng.integers(1, max_objects + 1))
    sph = {"sph_valid": np.zeros(max_objects, bool), "sph_centre": np.zeros((max_objects, 3)),
           "sph_radius": np.ones(max_objects)}
    box = {"box_valid": np.zeros(max_objects, bool), "box_centre": np.zeros((max_objects, 3)),
           "box_half": np.ones((max_objects, 3)), "box_yaw": np.zeros(max_objects)}
    placed = []  # (x, z, footprint radius)
    for k in range(n):
        is_sphere = rng.random() < 0.5
        size = rng.uniform(0.25, 0.7) if is_sphere else rng.uniform(0.2, 0.6, 3)
        foot = size if is_sphere else float(np.hypot(size[0], size[2]))
        for _ in range(10):  # rejection sampling of a free floor spot
            z = rng.uniform(2.5, back - foot - 0.2)
            half_view = 0.8 * z * tan
            x = rng.uniform(max(-left + foot, -half_view), min(right - foot, half_view))
            if all(np.hypot(x - px, z - pz) > foot + pf + 0.05 for px, pz, pf in placed):
                placed.append((x, z, foot))
                break
        else:
            continue
        if is_sphere:
            sph["sph_valid"][k], sph["sph_radius"][k] = True, size
            sph["sph_centre"][k] = x, size, z  # y relative to the floor for now
        else:
            box["box_valid"][k], box["box_half"][k] = True, size
            box["box_centre"][k] = x, size[1], z
            box["box_yaw"][k] = rng.uniform(0, np.pi / 2)
    return sph, box


def sample_depth_scene(seed, index, max_objects=DEFAULT_MAX_OBJECTS):
    """Parameters of depth example `index` (depends only on seed, index).

    Keys: ``camera`` [height, pitch, roll] (metres, radians; pitch > 0 looks
    down), ``room`` [back, left, right] (wall distances, metres), spheres
    (``sph_valid``, ``sph_centre`` (K, 3) world xyz, ``sph_radius``), boxes
    (``box_valid``, ``box_centre``, ``box_half`` half extents, ``box_yaw``
    about the vertical), and appearance (``light`` unit vector towards the
    light, ``fog`` [density per metre], ``fog_rgb``, ``floor_rgb`` (2, 3)
    checker colours, ``tile`` size, ``wall_rgb`` (3, 3) back/left/right,
    ``sph_rgb``, ``box_rgb``). Objects are padded to `max_objects` slots
    per kind (``*_valid`` marks the used ones).
    """
    rng = example_rng(seed, _SALT, index)
    height = rng.uniform(1.2, 1.8)
    camera = np.array([height, np.radians(rng.uniform(5, 20)), np.radians(rng.uniform(-4, 4))])
    room = np.array([rng.uniform(6.0, 8.0), rng.uniform(1.8, 4.0), rng.uniform(1.8, 4.0)])
    sph, box = _place_objects(rng, room, max_objects)
    sph["sph_centre"][:, 1] -= height  # rest on the floor y = -height
    box["box_centre"][:, 1] -= height
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.5, 1.0), rng.uniform(-0.9, -0.1)])
    hsv = lambda h, s, v, n=(): hsv_to_rgb(rng.uniform(*h, n), rng.uniform(*s, n),  # noqa: E731
                                             rng.uniform(*v, n))
    floor_rgb = hsv((0.0, 1.0), (0.1, 0.4), (0.45, 0.75))
    return {
        "camera": camera, "room": room, **sph, **box,
        "light": light / np.linalg.norm(light),
        "fog": np.array([rng.uniform(0.06, 0.12)]),
        "fog_rgb": hsv((0.5, 0.65), (0.0, 0.15), (0.75, 0.95)),
        "floor_rgb": np.stack([floor_rgb, floor_rgb * rng.uniform(0.55, 0.75)]),
        "tile": np.array([rng.uniform(0.5, 1.0)]),
        "wall_rgb": hsv((0.0, 1.0), (0.05, 0.35), (0.6, 0.95), (3,)),
        "sph_rgb": hsv((0.0, 1.0), (0.5, 0.9), (0.6, 1.0), (max_objects,)),
        "box_rgb": hsv((0.0, 1.0), (0.5, 0.9), (0.6, 1.0), (max_objects,)),
    }


def sample_depth_scenes(num_examples, seed=0, start=0, max_objects=DEFAULT_MAX_OBJECTS):
    """Stacked `sample_depth_scene` of examples start, ..., start + num - 1."""
    num_examples, _, seed, start = check_common(num_examples, 1, seed, start)
    max_objects = check_int("max_objects", max_objects)
    return stack_scenes([sample_depth_scene(seed, i, max_objects)
                         for i in range(start, start + num_examples)])


# -- ray casting ----------------------------------------------------------------
# Vectors are tuples (x, y, z) of arrays (structure of arrays: numpy is slow
# at reductions over a length-3 axis). Objects are handled slot by slot,
# each time only for the examples whose slot is used, keeping a running
# nearest hit; all arithmetic is element-wise per example.


def camera_rays(scenes, size):
    """World directions (x, y, z), each (B, H, W), of the pixel-centre rays,
    scaled so that the camera-frame z component is 1 (a hit at ray
    parameter t has z-depth t)."""
    rows, cols = (g.astype(np.float64) for g in pixel_grid(size))
    tan = np.tan(np.radians(FOV_DEGREES / 2))
    x, y = (cols - 0.5) * 2 * tan, (0.5 - rows) * 2 * tan
    pitch, roll = (scenes["camera"][:, i, None, None] for i in (1, 2))
    xr = x * np.cos(roll) - y * np.sin(roll)
    yr = x * np.sin(roll) + y * np.cos(roll)
    return xr, yr * np.cos(pitch) - np.sin(pitch), yr * np.sin(pitch) + np.cos(pitch)


def _plane_hit(direction, plane, facing):
    """Parameter of rays from the origin to the plane coord = `plane`, where
    they move towards it (sign(direction) == facing); inf otherwise."""
    ok = direction * facing > _EPS
    return np.where(ok, plane / np.where(ok, direction, 1.0), np.inf)


def _room_hits(rays, scenes):
    """[t] of the floor, back, left and right walls (each (B, H, W))."""
    col = lambda a: a[:, None, None]  # noqa: E731
    back, left, right = (col(scenes["room"][:, i]) for i in range(3))
    dx, dy, dz = rays
    return [_plane_hit(dy, -col(scenes["camera"][:, 0]), -1), _plane_hit(dz, back, 1),
            _plane_hit(dx, -left, -1), _plane_hit(dx, right, 1)]


def _sphere_hit(origin, ray, centre, radius):
    """Nearest positive hit (n, H, W) of rays with spheres; inf on a miss.

    origin, ray: tuples of (n, H, W) arrays; centre: tuple of (n, 1, 1);
    radius: (n, 1, 1).
    """
    oc = [o - c for o, c in zip(origin, centre)]
    a = ray[0] * ray[0] + ray[1] * ray[1] + ray[2] * ray[2]
    b = ray[0] * oc[0] + ray[1] * oc[1] + ray[2] * oc[2]
    c = oc[0] * oc[0] + oc[1] * oc[1] + oc[2] * oc[2] - radius * radius
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _to_box(v, cos, sin):
    """World vector -> box frame (rotation by the yaw about y)."""
    return cos * v[0] - sin * v[2], v[1], sin * v[0] + cos * v[2]


def _from_box(v, cos, sin):
    return cos * v[0] + sin * v[2], v[1], -sin * v[0] + cos * v[2]


def _box_hit(origin, ray, centre, half, yaw):
    """Nearest positive hit (n, H, W) of rays with yawed boxes (slab test).

    half: tuple of (n, 1, 1) half extents; yaw: (n, 1, 1)."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    p = _to_box([o - c for o, c in zip(origin, centre)], cos, sin)
    d = _to_box(ray, cos, sin)
    near, far = -np.inf, np.inf
    for pi, di, hi in zip(p, d, half):
        di = np.where(np.abs(di) < _EPS, _EPS, di)
        t1, t2 = (-hi - pi) / di, (hi - pi) / di
        near, far = np.maximum(near, np.minimum(t1, t2)), np.minimum(far, np.maximum(t1, t2))
    return np.where((near <= far) & (near > _EPS), near, np.inf)


def _object_slots(scenes):
    """[(surface id, kind, slot)] of the object slots (see trace_depth_scenes)."""
    k = scenes["sph_valid"].shape[1]
    return [(4 + i, "sph", i) for i in range(k)] + [(4 + k + i, "box", i) for i in range(k)]


def _object_hit(scenes, kind, slot, sel, origin, ray):
    """Hits of rays (of examples `sel`) with object `slot` of `kind`."""
    col = lambda a: a[sel, slot, ..., None, None]  # noqa: E731
    centre = tuple(col(scenes[kind + "_centre"][..., i]) for i in range(3))
    if kind == "sph":
        return _sphere_hit(origin, ray, centre, col(scenes["sph_radius"]))
    half = tuple(col(scenes["box_half"][..., i]) for i in range(3))
    return _box_hit(origin, ray, centre, half, col(scenes["box_yaw"]))


def trace_depth_scenes(scenes, size):
    """Nearest hit of every pixel ray.

    Returns (depth (B, H, W) float64, surface id (B, H, W) int, rays). Surface
    ids: FLOOR, BACK_WALL, LEFT_WALL, RIGHT_WALL, then 4 + k for sphere slot
    k and 4 + K + k for box slot k (K = padded slots per kind). Ties go to the
    lower id.
    """
    rays = camera_rays(scenes, size)
    hits = _room_hits(rays, scenes)
    depth, surface = hits[0], np.zeros(hits[0].shape, np.int64)
    for sid, t in enumerate(hits[1:], 1):
        surface = np.where(t < depth, sid, surface)
        depth = np.minimum(depth, t)
    for sid, kind, slot in _object_slots(scenes):
        sel = np.nonzero(scenes[kind + "_valid"][:, slot])[0]
        if len(sel):
            t = _object_hit(scenes, kind, slot, sel, (0.0, 0.0, 0.0), [r[sel] for r in rays])
            closer = t < depth[sel]
            surface[sel] = np.where(closer, sid, surface[sel])
            depth[sel] = np.where(closer, t, depth[sel])
    return depth, surface, rays


def analytic_depth(scenes, size):
    """Analytic z-depth (N, size, size) float64 of stacked scene parameters.

    The generator's labels are exactly ``analytic_depth(...)`` cast to
    float32.

    >>> scenes = sample_depth_scenes(2, seed=3)
    >>> analytic_depth(scenes, 16).shape
    (2, 16, 16)
    """
    return trace_depth_scenes(scenes, check_int("size", size))[0]


# -- shading ----------------------------------------------------------------------


def _normals(scenes, points, surface):
    """Unit surface normals (x, y, z), each (B, H, W), at the hit points."""
    n = [np.zeros_like(points[0]) for _ in range(3)]
    for sid, axis, sign in ((FLOOR, 1, 1), (BACK_WALL, 2, -1), (LEFT_WALL, 0, 1),
                            (RIGHT_WALL, 0, -1)):
        n[axis] = np.where(surface == sid, sign, n[axis])
    for sid, kind, slot in _object_slots(scenes):
        sel = np.nonzero(scenes[kind + "_valid"][:, slot])[0]
        if not len(sel):
            continue
        col = lambda a: a[sel, slot, ..., None, None]  # noqa: E731
        rel = [p[sel] - col(scenes[kind + "_centre"][..., i]) for i, p in enumerate(points)]
        if kind == "sph":
            normal = [r / col(scenes["sph_radius"]) for r in rel]
        else:  # the face whose slab the point is closest to leaving
            cos, sin = np.cos(col(scenes["box_yaw"])), np.sin(col(scenes["box_yaw"]))
            local = _to_box(rel, cos, sin)
            ratio = [local[i] / col(scenes["box_half"][..., i]) for i in range(3)]
            mag = [np.abs(r) for r in ratio]
            pick = [(mag[i] >= mag[(i + 1) % 3]) & (mag[i] >= mag[(i + 2) % 3]) for i in range(3)]
            pick[1] &= ~pick[0]
            pick[2] &= ~(pick[0] | pick[1])
            normal = _from_box([np.where(pick[i], np.sign(ratio[i]), 0.0) for i in range(3)],
                               cos, sin)
        on = surface[sel] == sid
        for i in range(3):
            n[i][sel] = np.where(on, normal[i], n[i][sel])
    return n


def _albedo(scenes, points, surface):
    """RGB albedo (B, H, W, 3): checkered floor, plain walls, object colours."""
    b, h, w = surface.shape
    tile = scenes["tile"][:, 0, None, None]
    parity = (np.floor(points[0] / tile) + np.floor(points[2] / tile)) % 2 > 0
    floor = np.where(parity[..., None], scenes["floor_rgb"][:, None, None, 1],
                     scenes["floor_rgb"][:, None, None, 0])
    table = np.concatenate([scenes["wall_rgb"], scenes["sph_rgb"], scenes["box_rgb"]], 1)
    idx = np.maximum(surface - 1, 0).reshape(b, h * w, 1)
    flat = np.take_along_axis(table, idx, axis=1).reshape(b, h, w, 3)
    return np.where((surface == FLOOR)[..., None], floor, flat)


def _in_shadow(scenes, points, normals):
    """Whether an object blocks the (directional) light (B, H, W)."""
    blocked = np.zeros(points[0].shape, bool)
    origins = [p + 1e-6 * n for p, n in zip(points, normals)]
    for _, kind, slot in _object_slots(scenes):
        sel = np.nonzero(scenes[kind + "_valid"][:, slot])[0]
        if len(sel):
            light = [np.broadcast_to(scenes["light"][sel, i, None, None], blocked[sel].shape)
                     for i in range(3)]
            t = _object_hit(scenes, kind, slot, sel, [o[sel] for o in origins], light)
            blocked[sel] |= np.isfinite(t)
    return blocked


def render_depth(scenes, size=64):
    """Renders stacked scene parameters -> {"image", "labels"} (module doc)."""
    size = check_int("size", size)
    depth, surface, rays = trace_depth_scenes(scenes, size)
    points = [r * depth for r in rays]
    normals = _normals(scenes, points, surface)
    light = [scenes["light"][:, i, None, None] for i in range(3)]
    lambert = np.maximum(sum(n * l for n, l in zip(normals, light)), 0)
    lit = 0.3 + 0.7 * lambert * ~_in_shadow(scenes, points, normals)
    fog = np.exp(-scenes["fog"][:, 0, None, None] * depth)[..., None]
    rgb = _albedo(scenes, points, surface) * lit[..., None] * fog \
        + scenes["fog_rgb"][:, None, None] * (1 - fog)
    return {"image": to_signed(rgb), "labels": depth[..., None].astype(np.float32)}


def make_depth_scenes(num_examples, size=64, seed=0, start=0, max_objects=DEFAULT_MAX_OBJECTS):
    """Procedural depth dataset as numpy arrays.

    Args:
        num_examples: number of examples (positive).
        size: image side in pixels (square images).
        seed: non-negative integer; example i depends only on (seed, i).
        start: index of the first example.
        max_objects: at most this many spheres/boxes per room (>= 1).

    Returns:
        {"image": float32 (N, size, size, 3) in [-1, 1],
         "labels": float32 (N, size, size, 1) z-depth in metres, within
         (MIN_DEPTH, MAX_DEPTH)}.

    Use ``DepthTask(bins=..., min_depth=MIN_DEPTH, max_depth=MAX_DEPTH)``.

    >>> make_depth_scenes(2, size=32)["labels"].shape
    (2, 32, 32, 1)
    """
    size = check_int("size", size)
    scenes = sample_depth_scenes(num_examples, seed, start, max_objects)
    per_chunk = 2 ** 20 // (size * size)
    return render_in_chunks(lambda s: render_depth(s, size), scenes, per_chunk)
