"""Pictures a person reads without the README: the demo's figure (title,
column names, scores, class key or depth scale), predict's legend (class
names, instances, class-id order), one palette and one depth scale bar."""

import json
import shutil

import numpy as np
import pytest

from common import REPO

WEIGHTS = REPO / "weights"
SHAPES_NAMES = ("void", "sky", "ground", "disc", "square", "triangle")


def _task(name):
    from uvim_keras.data.synthetic import SYNTHETIC_TASKS
    from uvim_keras.tasks import get_task

    return get_task(name, **SYNTHETIC_TASKS[name]["task_kwargs"])


def _data(name, n=3, size=32):
    from uvim_keras.data.synthetic import make_synthetic

    return make_synthetic(name, n, size=size, seed=0)


def _dark_columns(region):
    """x positions of the pixels of `region` (H, W, 3) that are not white."""
    return np.flatnonzero((np.asarray(region).min(axis=-1) < 200).any(axis=0))


# -- one palette, one depth scale bar ------------------------------------------------------
def test_one_palette_and_one_depth_scale_bar():
    from uvim_keras import visualize
    from uvim_keras.visualize import figures as pictures

    assert pictures.class_colors is visualize.class_colors
    assert pictures.depth_scale_bar is visualize.depth_scale_bar
    assert not hasattr(pictures, "distinct_colors") and not hasattr(visualize, "_PALETTE")
    colors = visualize.class_colors(6)
    assert colors.shape == (6, 3) and colors.dtype == np.uint8 and not colors[0].any()
    assert len({tuple(c) for c in visualize.class_colors(134)}) == 134  # COCO: all distinct
    # the demo's tiles and predict's overlay paint a class in the same colour
    panoptic = np.zeros((4, 4, 2), "int32")
    panoptic[..., 0] = 4
    np.testing.assert_array_equal(visualize.panoptic_to_rgb(panoptic, 6)[1, 1], colors[4])
    overlay = pictures.panoptic_overlay(np.zeros((4, 4, 3), "uint8"), panoptic, 6, alpha=1.0)
    np.testing.assert_array_equal(overlay[1, 1], colors[4])


def test_depth_scale_bar_is_labelled_in_metres():
    from uvim_keras import visualize

    bar = np.asarray(visualize.depth_scale_bar(120, 1.0, 9.0, title="depth"))
    assert bar.shape[0] == 120 and bar.shape[1] > 18 + 20  # a bar and its tick labels
    assert len(_dark_columns(bar[30:, 26:])) > 10  # the labels, right of the bar
    assert (bar[:10, 5] != bar[-1, 5]).any()  # the title above the bar
    bar = np.asarray(visualize.depth_scale_bar(120, 1.0, 9.0))
    top, bottom = bar[0, 5], bar[-1, 5]  # near (yellow) above far (purple)
    near, far = visualize.depth_to_rgb(np.array([[1.0, 9.0]]), 1.0, 9.0)[0]
    np.testing.assert_array_equal(top, near)
    np.testing.assert_array_equal(bottom, far)


# -- class names ---------------------------------------------------------------------------
def test_class_names_from_the_task_else_coco_else_numbered():
    from uvim_keras.visualize.figures import COCO_PANOPTIC_CLASSES, class_names

    assert class_names(6, SHAPES_NAMES) == SHAPES_NAMES
    assert class_names(6) == ("void", "class 1", "class 2", "class 3", "class 4", "class 5")
    assert class_names(134)[1:] == COCO_PANOPTIC_CLASSES
    with pytest.raises(ValueError, match="class_names has 2 names"):
        class_names(6, ["void", "sky"])


def test_panoptic_task_class_names_in_its_config():
    import keras

    from uvim_keras.data.synthetic import PANOPTIC_CLASS_NAMES
    from uvim_keras.tasks import PanopticTask

    assert PANOPTIC_CLASS_NAMES == SHAPES_NAMES
    task = _task("panoptic")
    assert task.class_names == SHAPES_NAMES
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(task))
    assert again.class_names == SHAPES_NAMES and again.get_config() == task.get_config()
    # a preset saved before class_names existed loads as before, without names
    saved = json.loads((WEIGHTS / "shapes_panoptic" / "task.json").read_text())
    old = saved["config"]["backbone"]["config"]["task"]["config"]
    assert "class_names" not in old
    task = PanopticTask.from_config(old)
    assert task.class_names is None and task.get_config() == old
    for bad in (["void", "sky"], "abcdef", [0, 1, 2, 3, 4, 5]):
        with pytest.raises(ValueError, match="class_names="):
            PanopticTask(num_classes=6, max_instances=9, class_names=bad)


# -- predict's legend ----------------------------------------------------------------------
def _maps():
    a = np.zeros((8, 8, 2), "int32")
    a[:4, :, 0], a[:4, :, 1] = 1, 1  # sky: one instance, half the pixels
    a[4:, :4, 0], a[4:, :4, 1] = 4, 2  # two squares
    a[4:, 4:, 0], a[4:, 4:, 1] = 4, 3
    b = a.copy()
    b[4:, 4:] = 0  # void; one square
    return a, b


def test_legend_entries_names_instances_and_class_id_order():
    from uvim_keras.visualize.figures import legend_entries

    a, b = _maps()
    entries = legend_entries(a, 6, SHAPES_NAMES)
    assert [(e["id"], e["name"], e["instances"]) for e in entries] == [
        (1, "sky", (1, 1)), (4, "square", (2, 2))]
    assert [e["label"] for e in entries] == ["1: sky (1 instance, 50.0%)",
                                             "4: square (2 instances, 50.0%)"]
    # the samples of one image: instances per sample, class-id order (not by share)
    b[:, :, 0] = np.where(b[..., 0] == 1, 5, b[..., 0])  # sky -> triangle (larger than void)
    entries = legend_entries([a, b], 6, SHAPES_NAMES)
    assert [e["id"] for e in entries] == [0, 1, 4, 5]
    assert [e["label"] for e in entries] == [
        "0: void (12.5%)", "1: sky (0-1 instances, 25.0%)", "4: square (1-2 instances, 37.5%)",
        "5: triangle (0-1 instances, 25.0%)"]
    assert abs(sum(e["share"] for e in entries) - 1.0) < 1e-9
    assert legend_entries(a, 6)[1]["label"].startswith("4: class 4 (2 instances")


def _legend_spy(monkeypatch):
    from uvim_keras.visualize import figures as pictures

    seen = []
    real = pictures.legend_entries

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(pictures, "legend_entries", spy)
    return seen


@pytest.mark.slow
def test_predict_picture_of_a_shapes_panoptic_prediction_names_the_classes(
        tmp_path, monkeypatch, capsys):
    """`uvim-keras predict` on the shapes_panoptic preset with its task's
    class_names (as the demo now saves them): the legend names the classes."""
    from PIL import Image

    from uvim_keras.cli import main
    from uvim_keras.presets import layout

    folder = tmp_path / "shapes_panoptic"
    shutil.copytree(WEIGHTS / "shapes_panoptic", folder)
    for name, path in (("task.json", ("config", "backbone", "config", "task", "config")),
                       ("config.json", ("config", "task", "config"))):
        data = json.loads((folder / name).read_text())
        node = data
        for key in path:
            node = node[key]
        assert node["num_classes"] == 6
        node["class_names"] = list(SHAPES_NAMES)
        (folder / name).write_text(json.dumps(data, indent=4))
    layout.record_integrity(folder)
    image = tmp_path / "shapes.png"
    data = _data("panoptic", n=1, size=64)
    Image.fromarray(((data["image"][0] + 1) * 127.5).round().astype("uint8")).save(image)
    seen = _legend_spy(monkeypatch)
    rc = main(["predict", "--preset", str(folder), str(image), "-o", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    assert len(seen) == 1
    names = {e["name"] for e in seen[0]}
    assert {"sky", "ground"} <= names <= set(SHAPES_NAMES), seen[0]
    assert [e["id"] for e in seen[0]] == sorted(e["id"] for e in seen[0])
    with Image.open(tmp_path / "out" / "shapes.png") as picture:
        assert picture.width > 2 * 256


def test_picture_without_class_names_numbers_the_classes(monkeypatch):
    from uvim_keras.visualize.figures import picture

    saved = json.loads((WEIGHTS / "shapes_panoptic" / "task.json").read_text())
    config = saved["config"]["backbone"]["config"]["task"]["config"]
    seen = _legend_spy(monkeypatch)
    a, b = _maps()
    image = np.zeros((8, 8, 3), "uint8")
    from uvim_keras.tasks import PanopticTask

    picture(PanopticTask(**config), image, [a, b])
    picture(_task("panoptic"), image, [a])
    assert [e["name"] for e in seen[0]] == ["void", "class 1", "class 4"]
    assert [e["name"] for e in seen[1]] == ["sky", "square"]


# -- the demo's figure -----------------------------------------------------------------------
def _figure(name="panoptic", scores=None, title="UViM demo: synthetic panoptic, seed 0", **kw):
    from uvim_keras.visualize.figures import demo_figure

    data = _data(name)
    labels = data["labels"]
    columns = {"no code": labels[::-1], "UViM (T=0)": labels, "T=1 sample a": labels[::-1]}
    return demo_figure(data["image"], labels, columns, _task(name), title=title, scores=scores,
                       rows=3, scale=3, **kw)


def _spans(cols=5, tile=96, pad=4, margin=12):
    """The x spans of the figure's columns (32 px tiles upscaled 3 x)."""
    return [(margin + c * (tile + pad), margin + c * (tile + pad) + tile) for c in range(cols)]


def test_demo_figure_title_columns_and_scores():
    plain = _figure()
    # larger than its grid of tiles (5 columns, 3 rows of 32 px tiles upscaled 3 x)
    assert plain.width > 5 * 96 + 4 * 4 and plain.height > 3 * 96 + 2 * 4 + 40
    pixels = np.asarray(plain)
    assert len(_dark_columns(pixels[12:30])) > 100  # the title, a line of text at the top
    other = np.asarray(_figure(title="another title"))
    assert other.shape == pixels.shape
    changed = np.flatnonzero((other != pixels).any(axis=(1, 2)))
    assert changed.min() >= 12 and changed.max() < 40  # only the title line differs

    left = _figure(scores={"no code": 12.345}, metric="PQ")
    right = _figure(scores={"UViM (T=0)": "PQ 52.5"})
    assert left.size == right.size and left.height > plain.height  # a line for the scores
    spans = _spans()
    differ = np.flatnonzero((np.asarray(left) != np.asarray(right)).any(axis=(0, 2)))
    in_column = lambda xs, c: spans[c][0] <= xs.min() and xs.max() < spans[c][1]
    no_code, uvim = differ[differ < spans[3][0]], differ[differ >= spans[3][0]]
    assert len(no_code) and len(uvim)
    assert in_column(no_code, 2) and in_column(uvim, 3)  # each score over its own column
    # the tiles are the same in all three
    h = np.asarray(plain).shape[0]
    np.testing.assert_array_equal(np.asarray(left)[-100:], np.asarray(plain)[h - 100:])


def test_demo_figure_key_per_task():
    kind, key = _task("panoptic").figure_key()
    assert kind == "classes"
    assert [text for _, text in key] == [f"{k}: {n}" for k, n in enumerate(SHAPES_NAMES)]
    from uvim_keras import visualize

    assert [c for c, _ in key] == [tuple(int(v) for v in c) for c in visualize.class_colors(6)]
    depth = _task("depth")
    assert depth.figure_key() == ("scale", depth.min_depth, depth.max_depth, "depth")
    assert _task("colorization").figure_key() is None
    # the key sits right of the grid: panoptic and depth figures are wider than colorization's
    widths = {name: _figure(name).width for name in ("panoptic", "depth", "colorization")}
    grid = 2 * 12 + 5 * 96 + 4 * 4
    assert widths["colorization"] == grid
    assert widths["panoptic"] > grid + 60 and widths["depth"] > grid + 60
    depth = np.asarray(_figure("depth"))
    assert len(_dark_columns(depth[100:, grid:])) > 20  # tick labels in metres
