"""The FID Inception network against pytorch-fid's own module; its weights.

The reference is pytorch-fid 0.3.0's ``InceptionV3([3], resize_input=True,
normalize_input=True, use_fid_inception=True)``, built offline: its weight
download (``load_state_dict_from_url``) is replaced by a random state dict
(He-scaled kernels, random BatchNorm gammas, betas, running means and
positive running variances) of exactly the modules it builds. The same
state dict goes through our .pth reader and converter into the Keras model,
and both get the same random images.

pytorch-fid imports torchvision. PyPI's torchvision wheels for Linux are
built against CUDA torch: beside torch's CPU build their C ops do not load
and ``import torchvision`` stops at registering fake kernels for
``torchvision::nms`` / ``qnms``. pytorch-fid needs only torchvision's
Python model code, so where the C ops are missing `_import_torchvision`
declares those two operator schemas first (no kernels) and imports again.
"""

import importlib.util
import sys

import keras
import numpy as np
import pytest

from uvim_keras.metrics import FID
from uvim_keras.metrics import FIDInceptionFeatureExtractor
from uvim_keras.metrics import FIDInceptionWeightsError
from uvim_keras.metrics import InceptionWeightsError
from uvim_keras.metrics import convert_pth_to_npz
from uvim_keras.metrics import fid_inception
from uvim_keras.metrics import fid_inception_weights as weights_module
from uvim_keras.metrics import load_fid_inception

FEATURE_ATOL = 1e-4
# Torchvision ops that `import torchvision` registers fake kernels for
# whether or not its C extension loaded (torchvision 0.28).
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_torchvision_schema_library = []


def _import_torchvision():
    import torch

    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules
                     if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_SCHEMAS:
            library.define(schema)
        _torchvision_schema_library.append(library)  # keep it registered
        import torchvision
    return torchvision


def _import_pytorch_fid():
    """pytorch_fid.inception and torchvision, or skip where not installed."""
    missing = [name for name in ("torch", "torchvision", "pytorch_fid")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install "
                    "'torchvision==0.28.*' pytorch-fid==0.3.0): no "
                    "pytorch-fid reference")
    torchvision = _import_torchvision()
    from pytorch_fid import inception

    return inception, torchvision


def _random_state_dict(template, seed):
    """Random values of the keys / shapes of a torch state dict template."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in template.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif value.ndim == 4:  # conv kernel (out, in, kh, kw), He scale
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (
                2.0 / fan_in) ** 0.5
        elif key.endswith("bn.weight"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif key.endswith("running_var"):
            state[key] = 0.5 + 1.5 * torch.rand(value.shape,
                                                generator=generator)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = 0.2 * torch.randn(value.shape, generator=generator)
        else:  # the unused fc classifier
            state[key] = 0.01 * torch.randn(value.shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """pytorch-fid's InceptionV3 with random weights, its state dict (what
    its loader got) and the path of that state dict saved as .pth."""
    import torch

    inception, torchvision = _import_pytorch_fid()
    built = {}
    original_inception_v3 = torchvision.models.inception_v3
    original_loader = inception.load_state_dict_from_url

    def capture_inception_v3(*args, **kwargs):
        built["net"] = original_inception_v3(*args, **kwargs)
        return built["net"]

    def random_weights(url, *args, **kwargs):
        assert url == weights_module.FID_WEIGHTS_URL
        built["state"] = _random_state_dict(built["net"].state_dict(), seed=0)
        return built["state"]

    torchvision.models.inception_v3 = capture_inception_v3
    inception.load_state_dict_from_url = random_weights
    try:
        model = inception.InceptionV3([3], resize_input=True,
                                      normalize_input=True,
                                      use_fid_inception=True).eval()
    finally:
        torchvision.models.inception_v3 = original_inception_v3
        inception.load_state_dict_from_url = original_loader
    path = tmp_path_factory.mktemp("fid_weights") / "pt_inception-random.pth"
    torch.save(built["state"], path)
    return model, built["state"], path


def _reference_features(model, images):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        return model(x)[0][:, :, 0, 0].numpy()


@pytest.fixture(scope="module")
def keras_model(reference):
    keras.utils.clear_session()
    return load_fid_inception(reference[2])


@pytest.mark.slow
@pytest.mark.multibackend
@pytest.mark.parametrize("height, width", [(64, 80), (320, 306)])
def test_features_match_pytorch_fid(reference, keras_model, height, width):
    rng = np.random.default_rng(height)
    images = rng.uniform(size=(3, height, width, 3)).astype(np.float32)
    expected = _reference_features(reference[0], images)
    got = keras.ops.convert_to_numpy(keras_model(images, training=False))
    assert got.shape == (3, 2048)
    error = np.abs(got - expected).max()
    print(f"\n{keras.backend.backend()} {height}x{width}: max |diff| "
          f"{error:.2e}, features mean {expected.mean():.3f}, "
          f"max {expected.max():.3f}")
    assert error <= FEATURE_ATOL


@pytest.mark.slow
@pytest.mark.multibackend
def test_extractor_and_fid_metric_match_pytorch_fid(reference, keras_model,
                                                    tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 50, 40, 3), dtype=np.uint8)
    # pytorch-fid's ImagePathDataset: PIL image -> ToTensor (x / 255).
    expected = _reference_features(reference[0],
                                   images.astype(np.float32) / 255)
    # Batches of 3, as above: JAX reuses the ops it compiled there.
    extractor = FIDInceptionFeatureExtractor(reference[2], batch_size=3)
    np.testing.assert_allclose(extractor(images), expected, rtol=0,
                               atol=FEATURE_ATOL)
    metric = FID(batch_size=3, image_range=(-1, 1))
    metric._default_extractor = extractor  # not built a third time
    metric.update_state(real_images=images.astype(np.float32) / 127.5 - 1)
    np.testing.assert_allclose(metric.real_features[0], expected, rtol=0,
                               atol=FEATURE_ATOL)


@pytest.mark.multibackend
@pytest.mark.parametrize("in_size, out_size", [
    ((64, 80), (299, 299)), ((600, 417), (299, 299)), ((300, 299), (299, 299)),
    ((1000, 150), (299, 299)), ((299, 299), (299, 299)), ((2, 3), (7, 5))])
def test_resize_matches_torch_interpolate(in_size, out_size):
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).uniform(
        size=(2, *in_size, 3)).astype(np.float32)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    expected = torch.nn.functional.interpolate(
        x, size=out_size, mode="bilinear", align_corners=False)
    got = keras.ops.convert_to_numpy(
        fid_inception.TorchBilinearResize(out_size)(images))
    # torch's float32 kernel, including its fused multiply-add for the
    # source position (float64 positions would be off by up to 6e-5 here).
    np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1),
                               rtol=0, atol=1e-6)
    if in_size[0] >= 2 * out_size[0]:  # antialiasing would be told apart
        smooth = torch.nn.functional.interpolate(
            x, size=out_size, mode="bilinear", align_corners=False,
            antialias=True).numpy().transpose(0, 2, 3, 1)
        assert np.abs(got - smooth).max() > 0.1


@pytest.mark.multibackend
def test_pools_match_torch_padding_rules():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    images = np.random.default_rng(0).normal(size=(2, 6, 7, 3)).astype(
        np.float32) - 3.0
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    def keras_pool(layer):
        return keras.ops.convert_to_numpy(layer(images)).transpose(0, 3, 1, 2)

    average = keras_pool(keras.layers.AveragePooling2D(3, 1, "same"))
    np.testing.assert_allclose(
        average, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).numpy(),
        rtol=0, atol=1e-6)
    assert np.abs(average - F.avg_pool2d(x, 3, 1, 1).numpy()).max() > 0.5
    np.testing.assert_array_equal(
        keras_pool(keras.layers.MaxPooling2D(3, 1, "same")),
        F.max_pool2d(x, 3, 1, 1).numpy())


def test_architecture_keys_match_pytorch_fid(reference):
    # pytorch-fid loaded this state dict strictly into its network.
    theirs = {key: tuple(value.shape) for key, value in reference[1].items()
              if not key.endswith("num_batches_tracked")}
    assert theirs.pop("fc.weight") == (1008, 2048)
    assert theirs.pop("fc.bias") == (1008,)
    ours = fid_inception.torch_state_dict_shapes(
        fid_inception.fid_inception_v3())
    assert ours == theirs
    assert len(ours) == 470  # 94 conv + BatchNorm units


# --- weights: files, conversion, errors (host side, one backend) ---------


def _random_npz_state(seed=0):
    """A random state dict (numpy) with pytorch-fid's keys and shapes."""
    rng = np.random.default_rng(seed)
    shapes = fid_inception.torch_state_dict_shapes(
        fid_inception.fid_inception_v3())
    state = {key: rng.normal(size=shape).astype(np.float32)
             for key, shape in shapes.items()}
    for key in state:
        if key.endswith("running_var"):
            state[key] = np.abs(state[key]) + 0.1
    return state


@pytest.fixture(scope="module")
def random_pth(tmp_path_factory):
    """A .pth as pytorch-fid ships it: the network, fc, num_batches_tracked."""
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in _random_npz_state().items()}
    state["fc.weight"] = torch.zeros(1008, 2048)
    state["fc.bias"] = torch.zeros(1008)
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(3)
    path = tmp_path_factory.mktemp("pth") / weights_module.FID_WEIGHTS_FILE
    torch.save(state, path)
    return path


def test_pth_to_npz_round_trip(random_pth, tmp_path):
    npz = convert_pth_to_npz(random_pth, tmp_path / "fid_inception.npz")
    pth_state = weights_module.read_state_dict(random_pth)
    npz_state = weights_module.read_state_dict(npz)
    assert "fc.weight" in pth_state and "fc.weight" not in npz_state
    assert not any(k.endswith("num_batches_tracked") for k in npz_state)
    assert set(npz_state) == set(pth_state) - {
        "fc.weight", "fc.bias", "Mixed_5b.branch1x1.bn.num_batches_tracked"}
    for key, value in npz_state.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, pth_state[key])
    keras.utils.clear_session()
    from_pth = load_fid_inception(random_pth)
    from_npz = load_fid_inception(npz)
    for a, b in zip(from_pth.get_weights(), from_npz.get_weights()):
        np.testing.assert_array_equal(a, b)
    conv = from_npz.get_layer("Mixed_6b__branch7x7_2__conv")
    np.testing.assert_array_equal(   # (out, in, 1, 7) -> (1, 7, in, out)
        keras.ops.convert_to_numpy(conv.kernel),
        npz_state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    bn = from_npz.get_layer("Mixed_7c__branch_pool__bn")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(bn.moving_variance),
        npz_state["Mixed_7c.branch_pool.bn.running_var"])
    with pytest.raises(ValueError, match=r"npz_path.*'w\.bin'.*\.npz"):
        convert_pth_to_npz(random_pth, "w.bin")


def test_wrong_missing_or_extra_key_is_named(tmp_path):
    state = _random_npz_state()
    shapes = {k: v.shape for k, v in state.items()}
    missing = dict(state)
    del missing["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(FIDInceptionWeightsError,
                       match=r"missing\.npz.*missing key "
                             r"'Mixed_6c\.branch7x7dbl_3\.bn\.running_var'"
                             r".*\(160,\)"):
        load_fid_inception(tmp_path / "missing.npz")
    extra = dict(state, **{"AuxLogits.fc.weight": np.zeros((1008, 768))})
    with pytest.raises(FIDInceptionWeightsError,
                       match=r"unexpected key 'AuxLogits\.fc\.weight'"):
        weights_module.check_state_dict(extra, shapes)
    renamed = dict(state)
    renamed["Conv2d_1a_3x3.conv.kernel"] = renamed.pop(
        "Conv2d_1a_3x3.conv.weight")
    with pytest.raises(FIDInceptionWeightsError,
                       match=r"missing key 'Conv2d_1a_3x3\.conv\.weight'.*"
                             r"unexpected key 'Conv2d_1a_3x3\.conv\.kernel'"):
        weights_module.check_state_dict(renamed, shapes)
    transposed = dict(state)
    transposed["Mixed_5b.branch5x5_2.conv.weight"] = state[
        "Mixed_5b.branch5x5_2.conv.weight"].transpose(2, 3, 1, 0)
    with pytest.raises(FIDInceptionWeightsError,
                       match=r"key 'Mixed_5b\.branch5x5_2\.conv\.weight': got "
                             r"shape \(5, 5, 48, 64\), expected "
                             r"\(64, 48, 5, 5\)"):
        weights_module.check_state_dict(transposed, shapes)
    weights_module.check_state_dict(
        dict(state, **{"fc.bias": np.zeros(1008)}), shapes)  # skipped


def test_offline_without_file_explains_what_to_do(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: network is unreachable")

    monkeypatch.setattr(weights_module.keras.utils, "get_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    metric = FID()  # features="fid_inception", pytorch-fid's weights
    with pytest.raises(FIDInceptionWeightsError) as info:
        metric.update_state(real_images=np.zeros((2, 80, 80, 3), np.uint8))
    assert isinstance(info.value, InceptionWeightsError)
    message = str(info.value)
    for part in ("network is unreachable", weights_module.FID_WEIGHTS_URL,
                 "inception_weights='/path/to/"
                 + weights_module.FID_WEIGHTS_FILE,
                 "~/.keras/models/", "convert_pth_to_npz",
                 "features='keras_inception_v3'"):
        assert part in message, part
    with pytest.raises(FIDInceptionWeightsError) as info:
        FID(inception_weights=tmp_path / "nowhere.pth").update_state(
            real_images=np.zeros((2, 80, 80, 3), np.uint8))
    message = str(info.value)
    assert "nowhere.pth" in message and "is not a file" in message
    assert weights_module.FID_WEIGHTS_URL in message


def test_torch_hub_cache_is_used_before_download(monkeypatch, tmp_path):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although torch hub has the file")

    monkeypatch.setattr(weights_module.keras.utils, "get_file", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / weights_module.FID_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert weights_module.resolve_fid_weights() == str(cached)
    assert weights_module.resolve_fid_weights(None) == str(cached)


def test_pth_without_torch_says_so(monkeypatch, tmp_path):
    path = tmp_path / weights_module.FID_WEIGHTS_FILE
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    with pytest.raises(FIDInceptionWeightsError,
                       match=r"needs torch.*pip install torch.*"
                             r"convert_pth_to_npz"):
        weights_module.read_state_dict(path)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"inception_weights.*'imagenet'.*"
                                         r"fid_inception.*keras_inception_v3"):
        FID(inception_weights="imagenet")
    with pytest.raises(ValueError, match=r"inception_weights.*'pytorch_fid'"):
        FID(features="keras_inception_v3", inception_weights="pytorch_fid")
    with pytest.raises(ValueError, match=r"features.*'pool3'.*fid_inception"):
        FID(features="pool3")
    with pytest.raises(ValueError, match=r"image_size.*128.*299"):
        FID(image_size=128)
    with pytest.raises(ValueError, match=r"image_range.*\(1, 0\).*high > low"):
        FID(image_range=(1, 0))
    with pytest.raises(ValueError, match=r"in_size, out_size.*0"):
        fid_inception.bilinear_resize_matrix(0, 3)


@pytest.mark.parametrize("module", [
    "fid_inception", "fid_inception_weights", "fid_inception_features"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"uvim_keras.metrics.{module}")
    failures, _ = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert failures == 0
