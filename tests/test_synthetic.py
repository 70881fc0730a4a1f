"""Tests of the procedural synthetic datasets (uvim_keras.data)."""

import time

import numpy as np
import pytest

from uvim_keras import data
from uvim_keras.data import (
    COLOR_PALETTE, MAX_DEPTH, MIN_DEPTH, PANOPTIC_CATEGORIES, PANOPTIC_NUM_CLASSES,
    SYNTHETIC_TASKS, analytic_depth, as_tf_dataset, luminance, make_colorization_shapes,
    make_depth_scenes, make_panoptic_shapes, make_synthetic, render_colorization,
    sample_colorization_scenes, sample_depth_scenes, synthetic_dataset)
from uvim_keras.data.synthetic_depth import camera_rays

GENERATORS = {name: spec["generator"] for name, spec in SYNTHETIC_TASKS.items()}
THINGS = [c["id"] for c in PANOPTIC_CATEGORIES if c["isthing"]]
SIZE = 48


@pytest.fixture(scope="module")
def panoptic():
    return make_panoptic_shapes(64, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def depth():
    scenes = sample_depth_scenes(24, seed=0)
    return make_depth_scenes(24, size=SIZE, seed=0), scenes


@pytest.fixture(scope="module")
def colorization():
    return make_colorization_shapes(32, size=SIZE, seed=0)


def _assert_same(a, b):
    assert a.keys() == b.keys() == {"image", "labels"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- determinism ------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_deterministic_for_a_seed_and_different_across_seeds(task):
    gen = GENERATORS[task]
    first, again = gen(6, size=32, seed=5), gen(6, size=32, seed=5)
    _assert_same(first, again)
    other = gen(6, size=32, seed=6)
    for k in ("image", "labels"):
        assert not np.array_equal(first[k], other[k]), k
    # Different examples within a set differ too.
    assert not np.array_equal(first["image"][0], first["image"][1])


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_example_depends_only_on_seed_and_index(task):
    gen = GENERATORS[task]
    batch = gen(9, size=32, seed=3)
    for i in (0, 4, 8):
        alone = gen(1, size=32, seed=3, start=i)
        _assert_same(alone, {k: v[i:i + 1] for k, v in batch.items()})
    middle = gen(3, size=32, seed=3, start=5)
    _assert_same(middle, {k: v[5:8] for k, v in batch.items()})


def test_chunked_rendering_matches_one_chunk():
    # 2**21 // (6 * 64 * 64) = 85 examples per chunk: 100 spans two chunks.
    big = make_panoptic_shapes(100, size=64, seed=1)
    tail = make_panoptic_shapes(20, size=64, seed=1, start=80)
    _assert_same(tail, {k: v[80:] for k, v in big.items()})


# -- panoptic -----------------------------------------------------------------------


def test_panoptic_formats(panoptic):
    image, labels = panoptic["image"], panoptic["labels"]
    assert image.dtype == np.float32 and image.shape == (64, SIZE, SIZE, 3)
    assert labels.dtype == np.int32 and labels.shape == (64, SIZE, SIZE, 2)
    assert image.min() >= -1 and image.max() <= 1
    sem, ins = labels[..., 0], labels[..., 1]
    assert sem.min() >= 0 and sem.max() < PANOPTIC_NUM_CLASSES
    max_instances = SYNTHETIC_TASKS["panoptic"]["task_kwargs"]["max_instances"]
    assert ins.min() >= 0 and ins.max() < max_instances


def test_panoptic_every_segment_has_an_instance(panoptic):
    """Things and stuff regions alike get ids >= 1 (big_vision's convention);
    each stuff class forms one segment per image; there is no void."""
    sem, ins = panoptic["labels"][..., 0], panoptic["labels"][..., 1]
    assert np.all(ins >= 1)
    assert set(np.unique(sem[~np.isin(sem, THINGS)])) <= {1, 2}  # sky, ground; no void
    for s_img, i_img in zip(sem, ins):
        for stuff_class in (1, 2):
            ids = np.unique(i_img[s_img == stuff_class])
            assert len(ids) <= 1
            if len(ids):  # the id belongs to that stuff region only
                assert np.all(s_img[i_img == ids[0]] == stuff_class)


def _centre_keys(ins_map, ids):
    """Raster key of the rounded centre of each instance's pixels (test's own)."""
    keys = []
    for i in ids:
        r, c = np.nonzero(ins_map == i)
        row, col = np.floor(r.mean() + 0.5), np.floor(c.mean() + 0.5)
        keys.append(row * ins_map.shape[1] + col)
    return keys


def test_panoptic_instances_contiguous_in_raster_order_one_class_each(panoptic):
    counts = []
    for sem, ins in zip(panoptic["labels"][..., 0], panoptic["labels"][..., 1]):
        ids = sorted(set(np.unique(ins)) - {0})
        assert ids == list(range(1, len(ids) + 1))
        keys = _centre_keys(ins, ids)
        assert keys == sorted(keys), keys
        for i in ids:
            assert len(np.unique(sem[ins == i])) == 1
            assert np.sum(ins == i) >= 8  # min_pixels
        counts.append(len(ids))
    # 1-6 things plus the visible stuff regions (sky and/or ground).
    assert 2 <= min(counts) and max(counts) <= 8 and len(set(counts)) >= 4


def test_panoptic_same_class_instances_touch_sometimes(panoptic):
    """Touching same-class instances make the split ambiguous from colour."""
    sem, ins = panoptic["labels"][..., 0], panoptic["labels"][..., 1]
    right = (ins[:, :, 1:] != ins[:, :, :-1]) & (sem[:, :, 1:] == sem[:, :, :-1])
    down = (ins[:, 1:] != ins[:, :-1]) & (sem[:, 1:] == sem[:, :-1])
    touching = right.any(axis=(1, 2)) | down.any(axis=(1, 2))
    assert 0.1 < touching.mean() < 0.9


def test_panoptic_class_appearance_is_visible_in_the_image(panoptic):
    rgb = (panoptic["image"] + 1) / 2
    sem = panoptic["labels"][..., 0]
    mean = {c: rgb[sem == c].mean(axis=0) for c in range(1, 6)}
    r, g, b = range(3)
    assert mean[1][b] > mean[1][r]                                  # sky: blue
    assert mean[2][g] > mean[2][b] and mean[2][g] > mean[2][r]      # ground: green
    assert mean[3][r] > 1.5 * mean[3][g] and mean[3][r] > 1.5 * mean[3][b]  # disc: red
    assert min(mean[4][r], mean[4][g]) > 1.5 * mean[4][b]           # square: yellow
    assert mean[5][b] > mean[5][g] and mean[5][r] > mean[5][g]      # triangle: violet


def test_panoptic_min_pixels_drops_small_instances():
    loose = make_panoptic_shapes(32, size=32, seed=2, min_pixels=1)["labels"][..., 1]
    strict = make_panoptic_shapes(32, size=32, seed=2, min_pixels=60)["labels"][..., 1]
    assert strict.reshape(32, -1).max(1).sum() < loose.reshape(32, -1).max(1).sum()
    for ins in strict:
        for i in set(np.unique(ins)) - {0}:
            assert np.sum(ins == i) >= 60


def test_panoptic_categories_and_task(panoptic):
    from uvim_keras.metrics.categories import CategorySpec
    from uvim_keras.tasks import get_task

    spec = CategorySpec(PANOPTIC_CATEGORIES)
    spec.check_ids(panoptic["labels"][..., 0], "labels")
    assert sorted(spec.ids.tolist()) == list(range(1, PANOPTIC_NUM_CLASSES))
    task = get_task("panoptic", **SYNTHETIC_TASKS["panoptic"]["task_kwargs"])
    task.check_labels(panoptic["labels"], image_size=(SIZE, SIZE))


# -- depth ----------------------------------------------------------------------------


def test_depth_labels_equal_the_analytic_depth(depth):
    arrays, scenes = depth
    expected = analytic_depth(scenes, SIZE)
    assert expected.dtype == np.float64
    np.testing.assert_array_equal(arrays["labels"][..., 0], expected.astype(np.float32))


def _on_surface(points, scene, tol=1e-6):
    """Whether each 3-D point (H, W, 3) lies on a surface of `scene` (test's own)."""
    x, y, z = np.moveaxis(points, -1, 0)
    height, (back, left, right) = scene["camera"][0], scene["room"]
    on = np.isclose(y, -height, atol=tol) | np.isclose(z, back, atol=tol) \
        | np.isclose(x, -left, atol=tol) | np.isclose(x, right, atol=tol)
    for k in np.nonzero(scene["sph_valid"])[0]:
        dist = np.linalg.norm(points - scene["sph_centre"][k], axis=-1)
        on |= np.isclose(dist, scene["sph_radius"][k], atol=tol)
    for k in np.nonzero(scene["box_valid"])[0]:
        c, s = np.cos(scene["box_yaw"][k]), np.sin(scene["box_yaw"][k])
        rel = points - scene["box_centre"][k]
        local = np.stack([c * rel[..., 0] - s * rel[..., 2], rel[..., 1],
                          s * rel[..., 0] + c * rel[..., 2]], -1)
        ratio = np.abs(local) / scene["box_half"][k]
        on |= np.isclose(ratio.max(-1), 1, atol=tol)
    return on


def test_depth_points_lie_on_scene_surfaces_and_in_the_room(depth):
    arrays, scenes = depth
    rays = np.stack(camera_rays(scenes, SIZE), axis=-1)
    pitch = scenes["camera"][:, 1, None, None]
    # Rays have unit z in the camera frame: ray . optical axis == 1.
    axis_dot = rays[..., 1] * -np.sin(pitch) + rays[..., 2] * np.cos(pitch)
    np.testing.assert_allclose(axis_dot, 1, atol=1e-12)
    exact = analytic_depth(scenes, SIZE)
    for b in range(len(exact)):
        scene = {k: v[b] for k, v in scenes.items()}
        points = rays[b] * exact[b][..., None]
        assert _on_surface(points, scene).all()
        height, (back, left, right) = scene["camera"][0], scene["room"]
        assert np.all(points[..., 1] >= -height - 1e-9) and np.all(points[..., 2] <= back + 1e-9)
        assert np.all(points[..., 0] >= -left - 1e-9) and np.all(points[..., 0] <= right + 1e-9)
    objects = exact < np.stack([analytic_depth_room_only(s, SIZE) for s in _split(scenes)])
    assert 0.02 < objects.mean() < 0.6  # objects cover part of the view


def _split(scenes):
    return [{k: v[b:b + 1] for k, v in scenes.items()} for b in range(len(scenes["camera"]))]


def analytic_depth_room_only(scene, size):
    empty = dict(scene, sph_valid=np.zeros_like(scene["sph_valid"]),
                 box_valid=np.zeros_like(scene["box_valid"]))
    return analytic_depth(empty, size)[0]


def test_depth_range_and_image_range(depth):
    arrays, _ = depth
    labels, image = arrays["labels"], arrays["image"]
    assert labels.dtype == np.float32 and labels.shape == (24, SIZE, SIZE, 1)
    assert image.dtype == np.float32 and image.shape == (24, SIZE, SIZE, 3)
    assert np.all(np.isfinite(labels))
    assert labels.min() > MIN_DEPTH and labels.max() < MAX_DEPTH
    assert labels.min() > 1.0 and labels.max() > 5.0  # the room spans metres
    assert image.min() >= -1 and image.max() <= 1


def test_depth_is_visible_through_fog(depth):
    """Far pixels are closer to the fog colour than near ones."""
    arrays, scenes = depth
    rgb = (arrays["image"] + 1) / 2
    dist = np.abs(rgb - scenes["fog_rgb"][:, None, None]).mean(-1)
    d = arrays["labels"][..., 0]
    near, far = d < np.percentile(d, 25), d > np.percentile(d, 75)
    assert dist[far].mean() < 0.7 * dist[near].mean()


def test_depth_task_bins(depth):
    from uvim_keras.tasks import get_task

    task = get_task("depth", **SYNTHETIC_TASKS["depth"]["task_kwargs"])
    labels = depth[0]["labels"]
    task.check_labels(labels, image_size=(SIZE, SIZE))
    bins = np.asarray(task.depth_to_bins(labels[..., 0]))
    assert bins.min() >= 1  # bin 0 means "no depth" to the loss
    assert len(np.unique(bins)) > 30


# -- colorization -----------------------------------------------------------------------


def test_colorization_image_is_the_luminance_of_the_labels(colorization):
    image, labels = colorization["image"], colorization["labels"]
    assert image.dtype == labels.dtype == np.float32
    assert image.shape == labels.shape == (32, SIZE, SIZE, 3)
    assert labels.min() >= -1 and labels.max() <= 1
    grey = luminance(labels)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey)
    np.testing.assert_allclose(grey, labels @ np.float32([0.299, 0.587, 0.114]), atol=1e-6)
    assert np.abs(labels - image).max() > 0.3  # labels are coloured


def test_colorization_palette_hues_have_equal_luminance():
    assert len(COLOR_PALETTE) >= 3
    np.testing.assert_allclose(luminance(COLOR_PALETTE), 0.5, atol=1e-12)
    assert np.all(COLOR_PALETTE.max(1) - COLOR_PALETTE.min(1) > 0.4)  # vivid
    assert len({tuple(c) for c in COLOR_PALETTE.round(3)}) == len(COLOR_PALETTE)


def test_colorization_hue_is_invisible_in_the_grey_image():
    scenes = sample_colorization_scenes(16, seed=4)
    base = render_colorization(scenes, size=32)
    shifted = dict(scenes, obj_hue=(scenes["obj_hue"] + 1) % len(COLOR_PALETTE))
    other = render_colorization(shifted, size=32)
    np.testing.assert_allclose(other["image"], base["image"], atol=1e-6)
    assert np.abs(other["labels"] - base["labels"]).max() > 0.5


def test_colorization_uses_several_hues(colorization):
    rgb = (colorization["labels"] + 1) / 2
    found = set()
    for i, c in enumerate(COLOR_PALETTE):
        # object pixels are palette * brightness: chromaticity equals the palette's
        chroma = rgb / np.maximum(rgb.sum(-1, keepdims=True), 1e-6)
        target = c / c.sum()
        if np.any(np.abs(chroma - target).max(-1) < 1e-3):
            found.add(i)
    assert len(found) == len(COLOR_PALETTE)


# -- tf.data --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_tf_dataset_yields_the_numpy_arrays(task):
    arrays = make_synthetic(task, 10, size=16, seed=0)
    ds = as_tf_dataset(arrays, batch_size=4)
    batches = list(ds.as_numpy_iterator())
    assert [len(b["image"]) for b in batches] == [4, 4, 2]
    for k in arrays:
        np.testing.assert_array_equal(np.concatenate([b[k] for b in batches]), arrays[k])
        assert batches[0][k].dtype == arrays[k].dtype
    via_helper = list(synthetic_dataset(task, 10, batch_size=10, size=16).as_numpy_iterator())
    _assert_same(via_helper[0], arrays)


def test_tf_dataset_shuffle_repeat_and_unbatched():
    arrays = make_colorization_shapes(6, size=8, seed=0)
    def order(ds):
        return [int(np.argmax(np.all(arrays["labels"] == e["labels"], axis=(1, 2, 3))))
                for e in ds.take(12).as_numpy_iterator()]

    first = order(as_tf_dataset(arrays, shuffle=True, seed=1, repeat=True))
    again = order(as_tf_dataset(arrays, shuffle=True, seed=1, repeat=True))
    assert first == again
    assert sorted(first[:6]) == sorted(first[6:]) == list(range(6))
    assert order(as_tf_dataset(arrays, repeat=True)) == list(range(6)) * 2
    dropped = list(as_tf_dataset(arrays, batch_size=4, drop_remainder=True).as_numpy_iterator())
    assert len(dropped) == 1


# -- registry and arguments --------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_registry_matches_generators_and_tasks(task):
    from uvim_keras.tasks import get_task

    spec = SYNTHETIC_TASKS[task]
    arrays = spec["generator"](3, size=16, seed=0)
    assert arrays["labels"].dtype == np.dtype(spec["label_dtype"])
    assert arrays["labels"].shape[-1] == spec["label_channels"]
    get_task(task, **spec["task_kwargs"]).check_labels(arrays["labels"], image_size=(16, 16))
    assert isinstance(spec["label_format"], str)


BAD_ARGUMENTS = [
    ("num_examples", 0), ("num_examples", -3), ("num_examples", True), ("size", 0),
    ("size", -64), ("size", 2.5), ("seed", -1), ("seed", 1.5), ("start", -2),
    ("max_objects", 0)]


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_bad_arguments_raise_value_error(task):
    for argument, value in BAD_ARGUMENTS:
        kwargs = {"num_examples": 2, "size": 16, "seed": 0, argument: value}
        with pytest.raises(ValueError, match=f"{argument}={value!r}"):
            GENERATORS[task](**kwargs)


def test_other_bad_arguments_raise_value_error():
    arrays = make_depth_scenes(2, size=8)
    with pytest.raises(ValueError, match="min_objects=4 > max_objects=2"):
        make_panoptic_shapes(2, size=16, min_objects=4, max_objects=2)
    with pytest.raises(ValueError, match="min_objects=0"):
        make_colorization_shapes(2, size=16, min_objects=0)
    with pytest.raises(ValueError, match="min_pixels=0"):
        make_panoptic_shapes(2, size=16, min_pixels=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        as_tf_dataset(arrays, batch_size=0)
    with pytest.raises(ValueError, match="first dimensions differ"):
        as_tf_dataset({"image": arrays["image"], "labels": arrays["labels"][:1]})
    with pytest.raises(ValueError, match="task='segmentation'"):
        make_synthetic("segmentation", 2)


def test_public_api():
    assert set(data.__all__) <= set(dir(data))
    assert set(SYNTHETIC_TASKS) == {"panoptic", "depth", "colorization"}


@pytest.mark.large
def test_generation_speed():
    """2,000 examples per task at 64x64 (report timing; loose bounds)."""
    for task, limit in (("panoptic", 10.0), ("depth", 20.0), ("colorization", 10.0)):
        start = time.perf_counter()
        make_synthetic(task, 2000, size=64, seed=0)
        elapsed = time.perf_counter() - start
        print(f"{task}: 2000 x 64x64 in {elapsed:.2f} s")
        assert elapsed < limit
