"""Pictures of predictions: panoptic overlay with a class legend, depth
colour map with a scale bar, colorization beside the grey input."""

import colorsys

import numpy as np

from uvim_keras import visualize

# The 133 COCO panoptic categories in the order of panopticapi's
# panoptic_coco_categories.json (sorted by id); UViM's class k is entry k - 1
# (class 0 is void), as big_vision's coco_panoptic evaluator maps them.
COCO_PANOPTIC_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow",
    "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "window-blind", "window-other", "tree-merged", "fence-merged",
    "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged",
    "floor-other-merged", "pavement-merged", "mountain-merged", "grass-merged", "dirt-merged",
    "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)
assert len(COCO_PANOPTIC_CLASSES) == 133


def class_names(num_classes):
    """Names of classes 0..num_classes-1 (COCO panoptic for 134 classes)."""
    if num_classes == len(COCO_PANOPTIC_CLASSES) + 1:
        return ("void",) + COCO_PANOPTIC_CLASSES
    return ("void",) + tuple(f"class {k}" for k in range(1, num_classes))


def distinct_colors(n):
    """(n, 3) uint8, class 0 black, others spread over hue (golden ratio)."""
    out = np.zeros((max(n, 1), 3), "uint8")
    for k in range(1, n):
        h = (k * 0.6180339887) % 1.0
        s = 0.55 + 0.35 * ((k * 7) % 3) / 2
        v = 0.95 - 0.25 * ((k * 5) % 2)
        out[k] = np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return out


def _font(size=13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # old Pillow: bitmap font only
        return ImageFont.load_default()


def _scale_for(height):
    return max(1, 256 // max(height, 1))


def _up(tile, scale):
    if scale == 1:
        return np.asarray(tile, "uint8")
    return np.repeat(np.repeat(np.asarray(tile, "uint8"), scale, 0), scale, 1)


def _canvas(panels, titles, extra=None):
    """Panels side by side with titles above; `extra` (a PIL image) at the right."""
    from PIL import Image, ImageDraw

    pad, header = 6, 20
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    extra_w = extra.width + pad if extra is not None else 0
    canvas = Image.new("RGB", (w + extra_w, max(h, extra.height if extra else 0) + header + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = pad
    for panel, title in zip(panels, titles):
        draw.text((x, 3), title, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(panel), (x, header))
        x += panel.shape[1] + pad
    if extra is not None:
        canvas.paste(extra, (x, header))
    return canvas


def panoptic_overlay(image, panoptic, num_classes, alpha=0.55):
    """uint8 (H, W, 3): the image blended with class colours (instances
    shaded apart), segment boundaries drawn dark."""
    sem, ins = np.asarray(panoptic)[..., 0], np.asarray(panoptic)[..., 1]
    colors = distinct_colors(num_classes).astype("float32")
    rgb = colors[np.clip(sem, 0, num_classes - 1)]
    rgb *= np.where(ins > 0, 1.0 - 0.25 * ((ins % 4) / 3.0), 1.0)[..., None]
    out = (1 - alpha) * np.asarray(image, "float32") + alpha * rgb
    out = np.where((sem == 0)[..., None], np.asarray(image, "float32") * 0.6, out)
    seg = sem.astype("int64") * 100000 + ins
    edge = np.zeros(seg.shape, bool)
    edge[1:] |= seg[1:] != seg[:-1]
    edge[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    out[edge] *= 0.25
    return np.clip(out, 0, 255).astype("uint8")


def panoptic_legend(panoptics, num_classes, height, max_rows=None):
    """A PIL image listing the classes present (largest first): colour
    swatch, name, number of instances, share of the pixels."""
    from PIL import Image, ImageDraw

    names = class_names(num_classes)
    colors = distinct_colors(num_classes)
    sem = np.concatenate([np.asarray(p)[..., 0].ravel() for p in panoptics])
    ins = np.concatenate([np.asarray(p)[..., 1].ravel() for p in panoptics])
    counts = np.bincount(sem, minlength=num_classes)
    order = [k for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    row_h = 16
    max_rows = max_rows or max(3, (height - 20) // row_h)
    shown = order[:max_rows]
    width = 230
    legend = Image.new("RGB", (width, max(height, row_h * (len(shown) + 2))), "white")
    draw = ImageDraw.Draw(legend)
    font = _font(12)
    draw.text((2, 0), "classes (share of pixels)", fill=(0, 0, 0), font=font)
    for r, k in enumerate(shown):
        y = row_h * (r + 1) + 2
        draw.rectangle([2, y, 14, y + 11], fill=tuple(int(c) for c in colors[k]), outline=(0, 0, 0))
        n_ins = len(np.unique(ins[(sem == k) & (ins > 0)]))
        label = f"{k}: {names[k]}" + (f" x{n_ins}" if n_ins > 1 else "")
        draw.text((20, y - 1), f"{label} ({100 * counts[k] / sem.size:.1f}%)", fill=(0, 0, 0),
                  font=font)
    if len(order) > len(shown):
        draw.text((20, row_h * (len(shown) + 1) + 2), f"... {len(order) - len(shown)} more",
                  fill=(0, 0, 0), font=font)
    return legend


def depth_scale_bar(height, lo, hi, ticks=5):
    """A PIL image: a vertical colour bar from `lo` (top, near) to `hi` (far)
    with tick labels in metres."""
    from PIL import Image, ImageDraw

    bar = visualize.depth_scale_bar(height, 18, lo, hi)
    img = Image.new("RGB", (80, height), "white")
    img.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(img)
    font = _font(12)
    for i in range(ticks):
        frac = i / (ticks - 1)
        y = int(round(frac * (height - 1)))
        draw.line([(18, y), (23, y)], fill=(0, 0, 0))
        draw.text((26, min(max(y - 7, 0), height - 14)), f"{lo + frac * (hi - lo):.2f} m",
                  fill=(0, 0, 0), font=font)
    return img


def picture(task, image, predictions, titles=None, task_config=None):
    """The picture of one image's predictions (a list, one per sample)."""
    image = np.asarray(image, "uint8")
    scale = _scale_for(image.shape[0])
    task_config = task_config or {}
    n = len(predictions)
    titles = titles or ([f"sample {i + 1}" for i in range(n)] if n > 1 else ["prediction"])
    if task == "panoptic":
        k = int(task_config.get("num_classes", max(int(np.max(p[..., 0])) for p in predictions) + 1))
        panels = [_up(image, scale)] + [_up(panoptic_overlay(image, p, k), scale) for p in predictions]
        legend = panoptic_legend(predictions, k, panels[0].shape[0])
        return _canvas(panels, ["input"] + titles, legend)
    if task == "depth":
        lo = float(min(np.min(p) for p in predictions))
        hi = float(max(np.max(p) for p in predictions))
        hi = hi if hi > lo else lo + 1e-3
        panels = [_up(image, scale)] + [
            _up(visualize.depth_to_rgb(np.asarray(p), lo, hi), scale) for p in predictions
        ]
        return _canvas(panels, ["input"] + titles, depth_scale_bar(panels[0].shape[0], lo, hi))
    if task == "colorization":
        panels = [_up(image, scale)] + [_up(visualize.image_to_uint8(p), scale) for p in predictions]
        return _canvas(panels, ["grey input"] + (titles if n > 1 else ["colorized"]))
    raise ValueError(f"no picture for task {task!r}.")
