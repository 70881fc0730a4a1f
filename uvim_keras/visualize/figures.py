"""Pictures a person reads without the README.

* `picture`: one image's predictions as `uvim-keras predict` writes them,
  each drawn by its task (`UViMTask.picture_panels`: a panoptic overlay
  with a legend of the classes present (names, instances, share of pixels),
  a depth colour map with a scale bar in metres, colours beside the grey
  input);
* `demo_figure`: the demo's figure of held-out images: a title, a caption
  saying how to read it, labelled columns with each model's score, and the
  task's key (class colours and names, or a depth scale bar).

Tasks say what to draw (`output_rgb`, `figure_key`, `caption`); this module
draws it, so a new task gets pictures without a change here.

Colours come from `uvim_keras.visualize.colors` (the one class palette and depth
colour map), so a class or a depth looks the same in every picture.
"""

import numpy as np

from uvim_keras.visualize import colors as visualize
from uvim_keras.visualize.colors import class_colors, depth_scale_bar, font as _font

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



def class_names(num_classes, names=None):
    """Names of classes 0..num_classes-1 (class 0 is void).

    `names` (a task's `class_names`, e.g. `PanopticTask(class_names=...)`)
    when given; else COCO panoptic's categories for 134 classes (UViM's COCO
    model, as big_vision maps them); else "void", "class 1", "class 2", ..."""
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names; expected one per class "
                             f"({num_classes}, class 0 = void included).")
        return names
    if num_classes == len(COCO_PANOPTIC_CLASSES) + 1:
        return ("void",) + COCO_PANOPTIC_CLASSES
    return ("void",) + tuple(f"class {k}" for k in range(1, num_classes))


def _scale_for(height):
    return max(1, 256 // max(height, 1))


def _up(tile, scale):
    if scale == 1:
        return np.asarray(tile, "uint8")
    return np.repeat(np.repeat(np.asarray(tile, "uint8"), scale, 0), scale, 1)


def _wrap(text, size, width):
    """`text` broken at spaces into lines no wider than `width` pixels (a
    single word wider than that gets a line of its own)."""
    lines = []
    for word in str(text).split(" "):
        if lines and visualize.text_width(lines[-1] + " " + word, size) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _canvas(panels, titles, extra=None):
    """Panels side by side with titles above; `extra` (a PIL image) at the right."""
    from PIL import Image, ImageDraw

    pad, size = 6, 14
    header = size + 8
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    extra_w = extra.width + pad if extra is not None else 0
    canvas = Image.new("RGB", (w + extra_w, max(h, extra.height if extra else 0) + header + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for panel, title in zip(panels, titles):
        draw.text((x, 3), title, fill=(0, 0, 0), font=_font(size))
        canvas.paste(Image.fromarray(panel), (x, header))
        x += panel.shape[1] + pad
    if extra is not None:
        canvas.paste(extra, (x, header))
    return canvas


def panoptic_overlay(image, panoptic, num_classes, alpha=0.55):
    """uint8 (H, W, 3): the image blended with class colours (instances
    shaded apart), segment boundaries drawn dark."""
    sem, ins = np.asarray(panoptic)[..., 0], np.asarray(panoptic)[..., 1]
    colors = class_colors(max(num_classes, int(sem.max(initial=0)) + 1)).astype("float32")
    rgb = colors[sem]
    rgb *= np.where(ins > 0, 1.0 - 0.25 * ((ins % 4) / 3.0), 1.0)[..., None]
    out = (1 - alpha) * np.asarray(image, "float32") + alpha * rgb
    out = np.where((sem == 0)[..., None], np.asarray(image, "float32") * 0.6, out)
    out[visualize.segment_edges(sem, ins)] *= 0.25
    return np.clip(out, 0, 255).astype("uint8")


def _maps(panoptics):
    """One (H, W, 2) map, or a list of them -> a list of numpy maps."""
    if getattr(panoptics, "ndim", None) == 3:
        return [np.asarray(panoptics)]
    return [np.asarray(p) for p in panoptics]


def _instances(lo, hi):
    if hi == 0:
        return ""
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{count} instance" + ("" if lo == hi == 1 else "s")


def legend_entries(panoptics, num_classes, names=None):
    """The classes present in `panoptics` (one (H, W, 2) [class, instance]
    map, or a list of them: the samples of one image), in class-id order.

    Returns a list of dicts: `id`, `name`, `color` (RGB tuple, as drawn),
    `instances` ((fewest, most) instances of the class over the maps),
    `share` (fraction of all the maps' pixels) and `label`, the legend's
    text, e.g. "4: square (2 instances, 12.5%)" ("1-3 instances" when
    samples differ; void names no instances)."""
    maps = _maps(panoptics)
    top = max([num_classes] + [int(m[..., 0].max(initial=0)) + 1 for m in maps])
    known = class_names(num_classes, names)
    all_names = known + tuple(f"class {k}" for k in range(num_classes, top))
    colors = class_colors(top)
    pixels = np.zeros(top, "int64")
    per_map = np.zeros((len(maps), top), "int64")  # instances of each class in each map
    for i, m in enumerate(maps):
        sem, ins = m[..., 0].astype("int64").ravel(), m[..., 1].astype("int64").ravel()
        pixels += np.bincount(sem, minlength=top)
        span = int(ins.max(initial=0)) + 1
        segments = np.unique(sem[ins > 0] * span + ins[ins > 0])  # (class, instance) pairs
        per_map[i] = np.bincount(segments // span, minlength=top)
    total = max(sum(m[..., 0].size for m in maps), 1)
    entries = []
    for k in np.flatnonzero(pixels):
        k = int(k)
        counts = per_map[:, k]
        lo, hi = int(counts.min()), int(counts.max())
        share = float(pixels[k] / total)
        what = ", ".join(t for t in (_instances(lo, hi) if k else "", f"{100 * share:.1f}%") if t)
        entries.append({"id": k, "name": all_names[k], "color": tuple(int(c) for c in colors[k]),
                         "instances": (lo, hi), "share": share,
                         "label": f"{k}: {all_names[k]} ({what})"})
    return entries


def _key(rows, header, height, size=13, max_rows=None):
    """A PIL image at least `height` tall: `header`, then one row per (RGB
    colour, text): a swatch and the text; at most `max_rows` rows (by
    default as many as fit), then "... N more"."""
    from PIL import Image, ImageDraw

    row_h = size + 6
    fit = max(3, (height - row_h) // row_h)
    max_rows = max_rows or (fit if len(rows) <= fit else fit - 1)  # a line for "... N more"
    more = max(len(rows) - max_rows, 0)
    rows = rows[:max_rows]
    texts = [header] + [t for _, t in rows] + ([f"... {more} more"] if more else [])
    width = size + 9 + max(visualize.text_width(t, size) for t in texts) + 6
    legend = Image.new("RGB", (width, max(height, row_h * (len(rows) + 2))), "white")
    draw = ImageDraw.Draw(legend)
    draw.text((2, 0), header, fill=(0, 0, 0), font=_font(size))
    for r, (color, text) in enumerate(rows):
        y = row_h * (r + 1) + 3
        draw.rectangle([2, y, 2 + size, y + size - 1], fill=color, outline=(0, 0, 0))
        draw.text((size + 9, y - 1), text, fill=(0, 0, 0), font=_font(size))
    if more:
        draw.text((size + 9, row_h * (len(rows) + 1) + 2), f"... {more} more", fill=(0, 0, 0),
                  font=_font(size))
    return legend


def render_key(key, height, size=13):
    """The PIL image of a figure key (`UViMTask.figure_key`), or None:
    ("classes", [(rgb, label), ...][, header]) -> colour swatches with their
    labels; ("scale", lo, hi, title) -> a colour bar in the task's unit."""
    if not key:
        return None
    if key[0] == "classes":
        header = key[2] if len(key) > 2 else "classes"
        return _key(key[1], header, height, size=size)
    if key[0] == "scale":
        _, lo, hi, title = key
        return depth_scale_bar(height, lo, hi, ticks=6, font_size=size, title=title)
    raise ValueError(f"key={key!r:.80}; expected ('classes', rows) or ('scale', lo, hi, title).")


def picture(task, image, predictions, titles=None):
    """The picture of one image's predictions (a list, one per sample):
    the input, each prediction as the task draws it
    (`task.picture_panels`), and its key (class legend, colour scale)."""
    image = np.asarray(image, "uint8")
    scale = _scale_for(image.shape[0])
    n = len(predictions)
    titles = titles or ([f"sample {i + 1}" for i in range(n)] if n > 1 else ["prediction"])
    tiles, key = task.picture_panels(image, [np.asarray(p) for p in predictions])
    panels = [_up(image, scale)] + [_up(tile, scale) for tile in tiles]
    first = "grey input" if task.grey_input else "input"
    return _canvas(panels, [first] + list(titles), render_key(key, panels[0].shape[0]))


# -- the demo's figure -------------------------------------------------------------------
def _format_score(value, metric=None):
    if isinstance(value, str):
        return value
    value = float(value)
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3
    return f"{metric} {value:.{digits}f}" if metric else f"{value:.{digits}f}"


def demo_figure(images, labels, columns, task, *, title, scores=None, metric=None,
                notes=(), rows=6, scale=3):
    """The demo's figure: a PIL image a person reads without the README.

    * `images`: the held-out inputs ((N, H, W, 3), [-1, 1] floats or uint8);
    * `labels`: their ground truth; `columns`: {column name: predictions
      (N, ...)}, in order (e.g. "no code", "oracle code", "UViM (T=0)");
    * `task`: the task object: it draws the tiles (`output_rgb`), the key
      (`figure_key`) and says how to read them (`caption`);
    * `title`: the first line, e.g. "UViM demo: synthetic panoptic,
      held-out images, seed 0";
    * `scores`: {column name: score}, drawn under the column's name: a
      string as is, a number as "`metric` value" (e.g. "PQ 52.5"); columns
      without one (input, samples) get none ("truth" or "ground truth"
      names the ground-truth column);
    * `notes`: more caption lines (e.g. what the scores are measured on),
      after the task's `caption`.

    Layout: title, caption, column names (and scores), `rows` rows of tiles
    upscaled `scale` x (nearest), the task's key at the right (class colours
    and names, a colour scale, or none)."""
    from PIL import Image, ImageDraw

    scores = dict(scores or {})
    n = min(rows, len(images))
    if n < 1:
        raise ValueError("demo_figure: no images.")
    names = ["grey input" if task.grey_input else "input", "ground truth"]
    names += list(columns)
    column_scores = [scores.get("input"), scores.get("ground truth", scores.get("truth"))]
    column_scores += [scores.get(c) for c in columns]
    tiles = [[visualize.image_to_uint8(images[i]), task.output_rgb(labels[i])]
             + [task.output_rgb(columns[c][i]) for c in columns] for i in range(n)]
    th, tw = (s * scale for s in tiles[0][0].shape[:2])
    margin, pad, gap = 12, 4, 16
    title_size, text_size = 20, 14
    line = text_size + 5
    grid_w = len(names) * (tw + pad) - pad
    grid_h = n * (th + pad) - pad
    key_img = render_key(task.figure_key([labels[:n]] + [columns[c][:n] for c in columns]),
                         grid_h, size=text_size)
    width = 2 * margin + grid_w + (gap + key_img.width if key_img is not None else 0)
    text_w = width - 2 * margin
    caption = [task.caption] + [str(t) for t in notes]
    title_lines = _wrap(title, title_size, text_w)
    caption_lines = [piece for c in caption if c for piece in _wrap(c, text_size, text_w)]
    label_lines = [_wrap(name, text_size, tw) for name in names]
    score_texts = [None if s is None else _format_score(s, metric) for s in column_scores]
    y_caption = margin + len(title_lines) * (title_size + 6)
    y_labels = y_caption + len(caption_lines) * line + 10
    label_h = max(len(ls) for ls in label_lines) * line
    score_h = line if any(s is not None for s in score_texts) else 0
    y_grid = y_labels + label_h + score_h + 4
    height = max(y_grid + grid_h, y_grid + (key_img.height if key_img is not None else 0)) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(title_lines):
        draw.text((margin, margin + i * (title_size + 6)), text, fill=(0, 0, 0),
                  font=_font(title_size))
    for i, text in enumerate(caption_lines):
        draw.text((margin, y_caption + i * line), text, fill=(60, 60, 60), font=_font(text_size))
    for c, (lines, score) in enumerate(zip(label_lines, score_texts)):
        x = margin + c * (tw + pad)
        for j, text in enumerate(lines):
            w = visualize.text_width(text, text_size)
            draw.text((x + max((tw - w) // 2, 0), y_labels + j * line), text, fill=(0, 0, 0),
                      font=_font(text_size))
        if score is not None:
            w = visualize.text_width(score, text_size)
            draw.text((x + max((tw - w) // 2, 0), y_labels + label_h), score,
                      fill=(20, 60, 160), font=_font(text_size))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(_up(tile, scale)),
                         (margin + c * (tw + pad), y_grid + r * (th + pad)))
    if key_img is not None:
        canvas.paste(key_img, (margin + grid_w + gap, y_grid))
    return canvas
