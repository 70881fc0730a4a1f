"""Pictures of inputs and task outputs (numpy + Pillow only).

The one class palette (`class_colors`), depth colour map (`depth_to_rgb`)
and depth scale bar (`depth_scale_bar`) of uvim-keras: the demo's figure
and `uvim-keras predict`'s pictures (`uvim_keras.visualize.figures`) both
draw with these, so a class or a depth has the same colour everywhere.
"""

import colorsys
import functools

import numpy as np

_GOLDEN = 0.6180339887


@functools.lru_cache(maxsize=64)
def _class_colors(n):
    out = np.zeros((n, 3), "uint8")
    for k in range(1, n):
        h = (k * _GOLDEN) % 1.0
        s = 0.55 + 0.35 * ((k * 7) % 3) / 2
        v = 0.95 - 0.25 * ((k * 5) % 2)
        out[k] = np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    out.setflags(write=False)
    return out


def class_colors(n):
    """(n, 3) uint8 colours of classes 0..n-1: class 0 (void) black, class
    k > 0 at hue k x golden ratio with alternating saturation and value, so
    neighbouring ids differ and any number of classes stays distinct."""
    return _class_colors(max(int(n), 1)).copy()


def image_to_uint8(image):
    """[-1, 1] float image (H, W, 3) -> uint8 (uint8 input is returned as is)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype("uint8")


def segment_edges(sem, ins):
    seg = sem.astype("int64") * 100000 + ins
    edge = np.zeros(seg.shape, bool)
    edge[1:] |= seg[1:] != seg[:-1]
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    return edge


def panoptic_to_rgb(panoptic, num_classes=None):
    """(H, W, 2) [class, instance] -> uint8 RGB: class colour (`class_colors`),
    each instance shaded differently, boundaries between segments darkened."""
    panoptic = np.asarray(panoptic)
    sem, ins = panoptic[..., 0], panoptic[..., 1]
    n = int(num_classes or sem.max() + 1)
    rgb = class_colors(max(n, 1))[np.clip(sem, 0, max(n, 1) - 1)].astype("float32")
    shade = 1.0 - 0.22 * ((ins % 4) / 3.0)
    rgb *= np.where(ins > 0, shade, 1.0)[..., None]
    rgb[segment_edges(sem, ins)] *= 0.35
    return rgb.astype("uint8")


def depth_to_rgb(depth, min_depth=None, max_depth=None):
    """(H, W) depth -> uint8 RGB with a perceptual-ish colour map: near
    yellow, middle teal, far purple."""
    depth = np.asarray(depth, "float32")
    lo = depth.min() if min_depth is None else min_depth
    hi = depth.max() if max_depth is None else max_depth
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
    near, mid, far = (np.array(c, "float32") for c in ([253, 231, 37], [33, 145, 140], [68, 1, 84]))
    rgb = np.where(t < 0.5, near + (mid - near) * (t * 2), mid + (far - mid) * (t * 2 - 1))
    return rgb.astype("uint8")


@functools.lru_cache(maxsize=16)
def font(size=14):
    """Pillow's default font at `size` pixels (a TrueType font on Pillow >=
    10.1; the small bitmap font on older Pillow)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow: bitmap font only
        return ImageFont.load_default()


def text_width(text, size=14):
    """Width in pixels of `text` drawn with `font(size)`."""
    from PIL import Image, ImageDraw

    return int(np.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font(size))))


def depth_scale_bar(height, min_depth, max_depth, ticks=5, bar_width=18, font_size=12,
                    title=None):
    """A PIL image: a vertical colour bar of `depth_to_rgb` from `min_depth`
    (top, near) to `max_depth` (bottom, far) with `ticks` labels in metres;
    `title` (e.g. "depth") above the bar when given."""
    from PIL import Image, ImageDraw

    lo, hi = float(min_depth), float(max_depth)
    labels = [f"{lo + i / (ticks - 1) * (hi - lo):.2f} m" for i in range(ticks)]
    top = font_size + 6 if title else 0
    text_w = max(text_width(t, font_size) for t in labels + ([title] if title else []))
    img = Image.new("RGB", (bar_width + 10 + text_w + 4, height), "white")
    bar_h = max(height - top, 2)
    column = np.linspace(lo, hi, bar_h, dtype="float32")[:, None]
    bar = depth_to_rgb(np.repeat(column, bar_width, axis=1), lo, hi)
    img.paste(Image.fromarray(bar), (0, top))
    draw = ImageDraw.Draw(img)
    f = font(font_size)
    if title:
        draw.text((0, 0), title, fill=(0, 0, 0), font=f)
    for i, label in enumerate(labels):
        y = top + int(round(i / (ticks - 1) * (bar_h - 1)))
        draw.line([(bar_width, y), (bar_width + 5, y)], fill=(0, 0, 0))
        draw.text((bar_width + 8, min(max(y - font_size // 2 - 1, top), height - font_size - 2)),
                  label, fill=(0, 0, 0), font=f)
    return img


def grid(rows, titles=None, scale=3, pad=2, font_size=14):
    """A Pillow image of rows of equally sized uint8 tiles, upscaled by
    `scale`, with `titles` above the columns. (The demo's annotated figure
    is `uvim_keras.visualize.figures.demo_figure`.)"""
    from PIL import Image, ImageDraw

    tile_h, tile_w = rows[0][0].shape[:2]
    th, tw = tile_h * scale, tile_w * scale
    header = font_size + 6 if titles else 0
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (tw + pad) + pad, header + len(rows) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if titles:
        for c, title in enumerate(titles):
            draw.text((pad + c * (tw + pad) + 2, 2), title, fill=(0, 0, 0), font=font(font_size))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            img = Image.fromarray(np.asarray(tile, "uint8")).resize((tw, th), Image.NEAREST)
            canvas.paste(img, (pad + c * (tw + pad), header + pad + r * (th + pad)))
    return canvas
