"""Pictures of inputs and task outputs (numpy + Pillow only)."""

import numpy as np

# A fixed, high-contrast palette (index 0 = void / background, black).
_PALETTE = np.array(
    [
        [0, 0, 0], [70, 130, 180], [107, 142, 35], [220, 20, 60], [255, 165, 0],
        [138, 43, 226], [0, 191, 255], [255, 215, 0], [46, 139, 87], [255, 105, 180],
        [160, 82, 45], [127, 255, 212], [255, 69, 0], [72, 61, 139], [154, 205, 50],
    ],
    "float32",
)


def class_colors(n):
    """(n, 3) uint8 colours; class 0 is black."""
    reps = int(np.ceil(n / len(_PALETTE)))
    return np.tile(_PALETTE, (reps, 1))[:n].astype("uint8")


def image_to_uint8(image):
    """[-1, 1] float image (H, W, 3) -> uint8."""
    return np.clip((np.asarray(image) + 1.0) * 127.5 + 0.5, 0, 255).astype("uint8")


def panoptic_to_rgb(panoptic, num_classes=None):
    """(H, W, 2) [class, instance] -> uint8 RGB: class colour, each instance
    shaded differently, boundaries between segments darkened."""
    panoptic = np.asarray(panoptic)
    sem, ins = panoptic[..., 0], panoptic[..., 1]
    n = int(num_classes or sem.max() + 1)
    rgb = class_colors(max(n, 1))[sem].astype("float32")
    shade = 1.0 - 0.22 * ((ins % 4) / 3.0)
    rgb *= np.where(ins > 0, shade, 1.0)[..., None]
    seg = sem.astype("int64") * 1000 + ins
    edge = np.zeros(seg.shape, bool)
    edge[1:] |= seg[1:] != seg[:-1]
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    rgb[edge] *= 0.35
    return rgb.astype("uint8")


def depth_to_rgb(depth, min_depth=None, max_depth=None):
    """(H, W) depth -> uint8 RGB with a perceptual-ish blue->yellow colour map."""
    depth = np.asarray(depth, "float32")
    lo = depth.min() if min_depth is None else min_depth
    hi = depth.max() if max_depth is None else max_depth
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
    near, mid, far = (np.array(c, "float32") for c in ([253, 231, 37], [33, 145, 140], [68, 1, 84]))
    rgb = np.where(t < 0.5, near + (mid - near) * (t * 2), mid + (far - mid) * (t * 2 - 1))
    return rgb.astype("uint8")


def depth_scale_bar(height, width, min_depth, max_depth):
    """A vertical colour bar (height, width, 3) from near (top) to far."""
    column = np.linspace(min_depth, max_depth, height, dtype="float32")[:, None]
    return depth_to_rgb(np.repeat(column, width, axis=1), min_depth, max_depth)


def grid(rows, titles=None, scale=3, pad=2):
    """A Pillow image of rows of equally sized uint8 tiles, upscaled by `scale`."""
    from PIL import Image, ImageDraw

    tile_h, tile_w = rows[0][0].shape[:2]
    th, tw = tile_h * scale, tile_w * scale
    header = 14 if titles else 0
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tw + pad) + pad, header + len(rows) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if titles:
        for c, title in enumerate(titles):
            draw.text((pad + c * (tw + pad) + 2, 1), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            img = Image.fromarray(np.asarray(tile, "uint8")).resize((tw, th), Image.NEAREST)
            canvas.paste(img, (pad + c * (tw + pad), header + pad + r * (th + pad)))
    return canvas
