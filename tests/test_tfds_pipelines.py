"""tensorflow-datasets pipelines: hand-made examples with known labels, and
`tfds.testing.mock_data` (offline; `MockPolicy.USE_CODE` needs no metadata
files) end to end."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from uvim_keras.data import coco_panoptic as cp  # noqa: E402
from uvim_keras.data import imagenet_colorization as ic  # noqa: E402
from uvim_keras.data import nyu_depth as nd  # noqa: E402
from uvim_keras.data import tfds_common as tc  # noqa: E402
from uvim_keras.data.synthetic_common import luminance  # noqa: E402

MOCK = dict(policy=tfds.testing.MockPolicy.USE_CODE)


def np_tree(d):
    return {k: np.asarray(v) for k, v in d.items()}


def png_ids(id_map):
    """(H, W) segment ids -> uint8 RGB COCO panoptic PNG pixels."""
    id_map = np.asarray(id_map, np.int64)
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], -1).astype(np.uint8)


def coco_example(id_map, objects, image=None):
    """objects: list of (segment id, COCO category id, is_crowd)."""
    h, w = np.shape(id_map)
    if image is None:
        image = np.full((h, w, 3), 128, np.uint8)
    return {
        "image": image,
        "panoptic_image": png_ids(id_map),
        "panoptic_objects": {
            "id": np.array([o[0] for o in objects], np.int64),
            "label": (cp.coco_category_to_class([o[1] for o in objects]) - 1).astype(np.int64),
            "is_crowd": np.array([o[2] for o in objects], bool),
        },
        "image/id": np.int64(7),
    }


def raster_keys(instances):
    """{id: (cy * W + cx, first pixel)} of each nonzero id of an (H, W) map."""
    h, w = instances.shape
    keys = {}
    for i in np.unique(instances[instances > 0]):
        ys, xs = np.nonzero(instances == i)
        keys[int(i)] = (ys.mean() * w + xs.mean(), ys[0] * w + xs[0])
    return keys


def assert_canonical(instances):
    keys = raster_keys(instances)
    assert sorted(keys) == list(range(1, len(keys) + 1))
    ordered = [keys[i] for i in sorted(keys)]
    assert ordered == sorted(ordered)


# -- COCO panoptic: hand-made examples ---------------------------------------------
# 6 x 8 map. A: sky (stuff), rows 0-1. C: crowd car rows 3-4, cols 3-5
# (centre (3.5, 4.0)). B: person rows 3-5, cols 0-1 (centre (4, 0.5)).
# D: a banner listed but without pixels. Everything else void.
A, B, C, D = 1000, 5, 70000 + 3, 42
ID_MAP = np.zeros((6, 8), np.int64)
ID_MAP[0:2, :] = A
ID_MAP[3:6, 0:2] = B
ID_MAP[3:5, 3:6] = C
OBJECTS = [(B, 1, False), (D, 92, False), (C, 3, True), (A, 187, False)]


def test_category_table():
    cats = cp.coco_panoptic_categories()
    assert len(cats) == 133 == cp.COCO_NUM_CLASSES - 1
    assert [c["id"] for c in cats] == list(range(1, 134))
    assert sum(c["isthing"] for c in cats) == 80
    coco = cp.coco_panoptic_categories(coco_ids=True)
    assert (coco[0]["id"], coco[79]["id"], coco[80]["id"], coco[-1]["id"]) == (1, 90, 92, 200)
    assert cp.coco_category_to_class([1, 3, 90, 92, 187, 200]).tolist() == [1, 3, 80, 81, 120,
                                                                           133]
    with pytest.raises(ValueError, match=r"\[12, 91\]"):
        cp.coco_category_to_class([12, 1, 91])


def test_parse_known_example():
    out = np_tree(cp.parse_coco_panoptic(coco_example(ID_MAP, OBJECTS)))
    sem, seg = out["labels"][..., 0], out["labels"][..., 1]
    assert out["labels"].dtype == np.int32 and out["image"].dtype == np.uint8
    assert (sem[ID_MAP == A] == 120).all() and (sem[ID_MAP == B] == 1).all()
    assert (sem[ID_MAP == C] == 3).all() and (sem[ID_MAP == 0] == 0).all()
    # segment numbers follow the objects' order (1-based); D has no pixels
    assert (seg[ID_MAP == B] == 1).all() and (seg[ID_MAP == C] == 3).all()
    assert (seg[ID_MAP == A] == 4).all() and (seg[ID_MAP == 0] == 0).all()
    np.testing.assert_array_equal(out["crowd"], ID_MAP == C)


@pytest.mark.parametrize("encoded", [False, True])
def test_eval_preprocessing_known_labels(encoded):
    ex = coco_example(ID_MAP, OBJECTS)
    if encoded:  # PNG bytes, as stored on disk
        ex["panoptic_image"] = tf.io.encode_png(ex["panoptic_image"])
        ex["image"] = tf.io.encode_png(ex["image"])
    out = np_tree(cp.preprocess_coco_panoptic(
        ex, train=False, size=None, with_crowd=True, with_stats=True,
        extra_keys=("image/id",)))
    expected_sem = np.zeros((6, 8), np.int32)
    expected_ins = np.zeros((6, 8), np.int32)
    # raster order of centres (cy * W + cx): A 7.5, C 32.0, B 32.5
    for seg, cls, ins in ((A, 120, 1), (C, 3, 2), (B, 1, 3)):
        expected_sem[ID_MAP == seg], expected_ins[ID_MAP == seg] = cls, ins
    np.testing.assert_array_equal(out["labels"][..., 0], expected_sem)
    np.testing.assert_array_equal(out["labels"][..., 1], expected_ins)
    np.testing.assert_array_equal(out["crowd"], ID_MAP == C)
    assert out["num_segments"] == 3 and out["dropped_segments"] == 0
    assert out["image/id"] == 7 and "image_ctx" not in out
    np.testing.assert_allclose(out["image"], 128 / 127.5 - 1, atol=1e-6)


def test_canonical_ties_go_to_first_raster_pixel():
    ring = np.full((5, 5), 9, np.int64)  # stuff ring and a thing in its hole:
    ring[1:4, 1:4] = 4                   # equal centres (2, 2)
    ex = coco_example(ring, [(4, 1, False), (9, 187, False)])
    out = np_tree(cp.preprocess_coco_panoptic(ex, train=False, size=None))
    assert (out["labels"][..., 1][ring == 9] == 1).all()   # ring's first pixel is (0, 0)
    assert (out["labels"][..., 1][ring == 4] == 2).all()


def test_instance_cap_drops_and_counts():
    row = np.arange(1, 13, dtype=np.int64)[None, :].repeat(2, 0)  # 12 segments
    ex = coco_example(row, [(i, 1 + i % 3, False) for i in range(1, 13)])
    stats = cp.InstanceCapStats()
    out = np_tree(cp.preprocess_coco_panoptic(ex, train=False, size=None, max_instances=5,
                                              stats=stats, with_stats=True))
    ins, sem = out["labels"][..., 1], out["labels"][..., 0]
    np.testing.assert_array_equal(ins[0], [1, 2, 3, 4] + [0] * 8)   # ids 1..4 kept
    assert (sem[:, 4:] == 0).all() and (sem[:, :4] > 0).all()        # extras -> void
    assert out["num_segments"] == 12 and out["dropped_segments"] == 8
    assert stats.result() == {"examples": 1, "examples_over_cap": 1, "segments_dropped": 8}
    cp.preprocess_coco_panoptic(ex, train=False, size=None, stats=stats)  # 12 < 99 segments
    assert stats.result() == {"examples": 2, "examples_over_cap": 1, "segments_dropped": 8}
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 4 segments"):
        cp.preprocess_coco_panoptic(ex, train=False, size=None, max_instances=5,
                                    overflow="error")
    with pytest.raises(ValueError, match="overflow"):
        cp.canonicalize_instances(out["labels"], overflow="ignore")


def test_instance_cap_in_tf_data_counts():
    row = np.arange(1, 121, dtype=np.int64).reshape(8, 15)  # 120 segments > 99
    ex = coco_example(row, [(i, 1, False) for i in range(1, 121)])
    stats = cp.InstanceCapStats()
    ds = tf.data.Dataset.from_tensors(ex).repeat(3).map(
        lambda e: cp.preprocess_coco_panoptic(e, train=False, size=None, stats=stats))
    outs = [b["labels"] for b in ds.as_numpy_iterator()]
    assert max(o[..., 1].max() for o in outs) == 99
    assert stats.result() == {"examples": 3, "examples_over_cap": 3, "segments_dropped": 63}
    stats.reset()
    assert stats.result()["examples"] == 0


def test_bad_coco_input():
    ex = coco_example(ID_MAP, OBJECTS)
    with pytest.raises(ValueError, match="panoptic_objects"):
        cp.preprocess_coco_panoptic({k: v for k, v in ex.items() if k != "panoptic_objects"},
                                    train=False, size=8)
    bad = dict(ex, panoptic_image=ex["panoptic_image"].astype(np.float32))
    with pytest.raises(ValueError, match="panoptic_image has dtype float32"):
        cp.preprocess_coco_panoptic(bad, train=False, size=8)
    bad = dict(ex, panoptic_objects=dict(ex["panoptic_objects"], id=np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="panoptic_objects/id has dtype float32"):
        cp.preprocess_coco_panoptic(bad, train=False, size=8)
    with pytest.raises(ValueError, match="image/id"):
        cp.preprocess_coco_panoptic({k: v for k, v in ex.items() if k != "image/id"},
                                    train=False, size=8, extra_keys=("image/id",))
    bad = dict(ex, image=np.zeros((6, 7, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ in size"):
        cp.preprocess_coco_panoptic(bad, train=False, size=8)
    dup = coco_example(ID_MAP, OBJECTS + [(B, 1, False)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="duplicate"):
        cp.preprocess_coco_panoptic(dup, train=False, size=8)


def quadrant_example(size=32):
    """Four classes in quadrants (one segment each); image R = 50 * quadrant."""
    id_map = np.zeros((size, size), np.int64)
    h = size // 2
    image = np.zeros((size, size, 3), np.uint8)
    for q, (y, x) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        id_map[y:y + h, x:x + h] = q + 1
        image[y:y + h, x:x + h, 0] = 50 * (q + 1)
    objects = [(q + 1, cid, False) for q, cid in enumerate([1, 3, 92, 187])]
    return coco_example(id_map, objects, image)


def test_train_augmentation_is_joint_and_canonical():
    ex = quadrant_example()
    red_of_class = {1: 50, 3: 100, 81: 150, 120: 200}
    flipped = 0
    for s in range(6):
        out = np_tree(cp.preprocess_coco_panoptic(ex, train=True, seed=[3, s], size=24,
                                                  label_size=12))
        assert out["image"].shape == (24, 24, 3) and out["labels"].shape == (12, 12, 2)
        assert out["image_ctx"].shape == (12, 12, 3)
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        sem = out["labels"][..., 0]
        assert set(np.unique(sem)) <= set(red_of_class)
        assert_canonical(out["labels"][..., 1])
        # image_ctx and labels share the crop and flip: interior pixels agree
        red = (out["image_ctx"][..., 0] + 1) * 127.5
        for y in range(1, 11):
            for x in range(1, 11):
                win = sem[y - 1:y + 2, x - 1:x + 2]
                if (win == win[0, 0]).all():
                    assert abs(red[y, x] - red_of_class[sem[y, x]]) < 1.0
        # the class left of a vertical split tells whether this seed flipped
        cols = [c for c in range(12) if len(np.unique(sem[:, c])) == 1]
        flipped += int(any(sem[0, c] == 3 and c < 6 for c in cols)
                       or any(sem[-1, c] == 120 and c < 6 for c in cols))
    assert 0 < flipped < 6
    a = cp.preprocess_coco_panoptic(ex, train=True, seed=[1, 2], size=24)
    b = cp.preprocess_coco_panoptic(ex, train=True, seed=[1, 2], size=24)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert "image_ctx" not in a


def test_inception_box_and_flip_ops():
    x = tf.reshape(tf.range(40 * 60), (40, 60, 1))
    areas = []
    for s in range(20):
        begin, size = tc.inception_box(tf.shape(x), tf.constant([0, s], tf.int64))
        crop = tc.crop_box(x, (begin, size))
        h, w = crop.shape[:2]
        areas.append(h * w / 2400)
        assert 0.04 <= h * w / 2400 <= 1.0 and 0.7 <= w / h <= 1.4 or (h, w) == (40, 60)
        np.testing.assert_array_equal(crop[0, 0], x[int(round(float(begin[0]) * 40)),
                                                    int(round(float(begin[1]) * 60))])
    assert min(areas) < 0.5
    both = tc.random_flip_lr(tf.constant([0, 0], tf.int64), {"a": x, "b": x * 2})
    np.testing.assert_array_equal(both["b"], both["a"] * 2)


def test_coco_mock_data():
    with tfds.testing.mock_data(num_examples=3, max_value=2, **MOCK):
        # tfds' random mock examples are inconsistent (object fields of
        # different lengths): strict mode says so clearly
        ds = cp.coco_panoptic_dataset("validation", batch_size=2, size=16)
        with pytest.raises(tf.errors.InvalidArgumentError, match="strict=False"):
            next(iter(ds))
        stats = cp.InstanceCapStats()
        for split in ("train", "validation"):
            ds = cp.coco_panoptic_dataset(split, batch_size=2, size=32, label_size=16,
                                          strict=False, stats=stats, with_crowd=True,
                                          extra_keys=("image/id",), shuffle_buffer=4)
            batch = np_tree(next(iter(ds)))
            assert batch["image"].shape == (2, 32, 32, 3)
            assert batch["image_ctx"].shape == (2, 16, 16, 3)
            assert batch["labels"].shape == (2, 16, 16, 2) and batch["labels"].dtype == np.int32
            assert batch["crowd"].shape == (2, 16, 16) and batch["image/id"].shape == (2,)
            assert 0 <= batch["labels"][..., 0].min() and batch["labels"][..., 0].max() < 134
            assert 0 <= batch["labels"][..., 1].min() and batch["labels"][..., 1].max() < 100
            assert batch["labels"][..., 1].max() > 0           # max_value=2: ids do match
            for labels in batch["labels"]:
                assert_canonical(labels[..., 1])
                assert ((labels[..., 0] == 0) == (labels[..., 1] == 0)).all()
            assert -1 <= batch["image"].min() and batch["image"].max() <= 1
        assert stats.result()["examples"] >= 4


# -- NYU depth ------------------------------------------------------------------
def test_nyu_mock_data_and_eval_crop():
    with tfds.testing.mock_data(num_examples=2, **MOCK):
        raw = next(iter(tfds.builder("nyu_depth_v2").as_dataset(split="validation")))
        ds = nd.nyu_depth_dataset("validation", size=None, with_ground_truth=True)
        ex = np_tree(next(iter(ds)))
        expected = raw["depth"].numpy().astype(np.float32)[54:480, 41:601, None]
        assert ex["labels"].shape == (426, 560, 1) and ex["labels"].dtype == np.float32
        np.testing.assert_array_equal(ex["labels"], expected)
        np.testing.assert_array_equal(ex["ground_truth"], expected)
        np.testing.assert_allclose(
            ex["image"], raw["image"].numpy()[54:480, 41:601] / 127.5 - 1, atol=1e-6)
        val = np_tree(next(iter(nd.nyu_depth_dataset("validation", size=32, batch_size=2))))
        assert val["image"].shape == (2, 32, 32, 3) and val["labels"].shape == (2, 32, 32, 1)
        train = np_tree(next(iter(nd.nyu_depth_dataset(
            "train", size=32, label_size=16, batch_size=2, shuffle_buffer=2))))
        assert train["image"].shape == (2, 32, 32, 3) and train["labels"].shape == (2, 16, 16, 1)
        assert train["image_ctx"].shape == (2, 16, 16, 3)
        assert 0 <= train["labels"].min() and train["labels"].max() <= 1  # mock depths


def test_nyu_train_flip_crop_joint():
    cols = np.arange(64, dtype=np.float32)
    depth = np.tile(cols / 10, (48, 1))                       # depth = column / 10
    image = np.repeat((cols * 4).astype(np.uint8)[None, :, None], 48, 0).repeat(3, 2)
    ex = {"image": image, "depth": depth.astype(np.float16)}
    seen_flip = set()
    for s in range(8):
        out = np_tree(nd.preprocess_nyu_depth(ex, train=True, seed=[5, s], size=None))
        red = (out["image"][..., 0] + 1) * 127.5
        np.testing.assert_allclose(red, np.round(out["labels"][..., 0] * 10) * 4, atol=1e-3)
        seen_flip.add(bool(out["labels"][0, 0, 0] > out["labels"][0, -1, 0]))
    assert seen_flip == {True, False}


def test_bad_nyu_input():
    ex = {"image": np.zeros((480, 640, 3), np.uint8), "depth": np.zeros((480, 640), np.float32)}
    with pytest.raises(ValueError, match="depth"):
        nd.preprocess_nyu_depth({"image": ex["image"]}, train=False)
    with pytest.raises(ValueError, match="depth has dtype int32"):
        nd.preprocess_nyu_depth(dict(ex, depth=ex["depth"].astype(np.int32)), train=False)
    with pytest.raises(ValueError, match="image has dtype float32"):
        nd.preprocess_nyu_depth(dict(ex, image=ex["image"].astype(np.float32)), train=False)
    small = {"image": ex["image"][:100], "depth": ex["depth"][:100]}
    with pytest.raises(tf.errors.InvalidArgumentError, match="480 x 640"):
        nd.preprocess_nyu_depth(small, train=False)
    out = nd.preprocess_nyu_depth(small, train=False, eval_crop=False, size=8)
    assert out["labels"].shape == (8, 8, 1)


# -- ImageNet colorization ----------------------------------------------------------
def test_imagenet_mock_data():
    with tfds.testing.mock_data(num_examples=2, **MOCK):
        for split in ("train", "validation"):
            ds = ic.imagenet_colorization_dataset(split, batch_size=2, size=32, label_size=16,
                                                  shuffle_buffer=2)
            b = np_tree(next(iter(ds)))
            assert b["image"].shape == (2, 32, 32, 3) and b["labels"].shape == (2, 16, 16, 3)
            assert b["image_ctx"].shape == (2, 16, 16, 3)
            for key in ("image", "image_ctx"):  # grey: equal channels
                np.testing.assert_array_equal(b[key][..., 0], b[key][..., 2])
            for v in b.values():
                assert v.dtype == np.float32 and -1 <= v.min() and v.max() <= 1
            assert np.abs(b["labels"][..., 0] - b["labels"][..., 1]).max() > 0.05


def test_imagenet_eval_coltran_centre_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3)).astype(np.uint8)
    out = np_tree(ic.preprocess_imagenet_colorization({"image": image}, train=False,
                                                      size=None))
    centre = image[:, 2:8].astype(np.float32)               # largest centred square
    np.testing.assert_allclose(out["labels"], centre / 127.5 - 1, atol=1e-6)
    grey = luminance(centre / 127.5 - 1)
    np.testing.assert_allclose(out["image"], np.repeat(grey[..., None], 3, -1), atol=1e-5)
    out = np_tree(ic.preprocess_imagenet_colorization({"image": image}, train=False, size=3))
    area = np.round(centre.reshape(3, 2, 3, 2, 3).mean(axis=(1, 3)))
    np.testing.assert_allclose(out["labels"], area / 127.5 - 1, atol=1e-6)
    out = np_tree(ic.preprocess_imagenet_colorization({"image": image}, train=False, size=3,
                                                      coltran_scale=True))
    np.testing.assert_allclose(out["labels"], area / 128 - 1, atol=1e-6)
    out = np_tree(ic.preprocess_imagenet_colorization({"image": image}, train=False, size=4,
                                                      eval_mode="resize"))
    assert out["labels"].shape == (4, 4, 3)                  # whole image, no crop
    with pytest.raises(ValueError, match="eval_mode"):
        ic.preprocess_imagenet_colorization({"image": image}, train=False, eval_mode="crop")
    with pytest.raises(ValueError, match=r"no key\(s\) \['image'\]"):
        ic.preprocess_imagenet_colorization({"jpeg": image}, train=False)


def test_imagenet_train_flip_and_grey():
    ramp = np.repeat(np.linspace(0, 255, 40)[None, :, None], 30, 0)
    image = np.concatenate([ramp, 255 - ramp, np.full_like(ramp, 30)], -1).astype(np.uint8)
    flips = set()
    for s in range(8):
        out = np_tree(ic.preprocess_imagenet_colorization({"image": image}, train=True,
                                                          seed=[0, s], size=16))
        grey = luminance(out["labels"])
        np.testing.assert_allclose(out["image"][..., 1], grey, atol=1e-5)
        flips.add(bool(out["labels"][0, 0, 0] > out["labels"][0, -1, 0]))
    assert flips == {True, False}


def test_image_ctx_rules():
    assert tc.want_image_ctx(None, (512, 512), (512, 512)) is False
    assert tc.want_image_ctx(None, (1280, 1280), (512, 512)) is True
    assert tc.want_image_ctx(True, (512, 512), (512, 512)) is True
    with pytest.raises(ValueError, match="size"):
        tc.check_size(0)
    out = cp.preprocess_coco_panoptic(quadrant_example(), train=False, size=16, image_ctx=True)
    assert out["image_ctx"].shape == (16, 16, 3)
    np.testing.assert_allclose(out["image_ctx"], out["image"], atol=1e-6)
