"""Presets: named big_vision releases, first-use download/convert/cache,
keras-hub round trips, hf:// loading from huggingface_hub's offline cache and
uploads (huggingface_hub patched at its API object). Offline: checkpoints are
served from the big_vision fixtures by an HTTP server on 127.0.0.1."""

import json
import os
import shutil

import numpy as np
import pytest

from common import LAYOUT2, to_numpy
from helpers import panoptic_batch, randomize_with_state, tiny_lm, tiny_stage1
from presets_helpers import (
    FileServer,
    fixture_bytes,
    fixture_spec,
    npz_with_wrong_shape,
    stage2_meta,
)
from presets_helpers import cache_dir, registered, server  # noqa: F401  (fixtures)

import uvim_keras  # noqa: F401  (selects the default backend before keras)


def _files_under(path):
    return sorted(
        os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs
    ) if os.path.isdir(path) else []


def _data_files_under(path):
    """`_files_under` without the cache's lock files."""
    return [f for f in _files_under(path) if not f.startswith("locks" + os.sep)]


@pytest.fixture(scope="module")
def tiny_uvim():
    from uvim_keras import UViM

    lm, stage1 = tiny_lm(), tiny_stage1()
    randomize_with_state(lm, 1)
    randomize_with_state(stage1, 2)
    return UViM.from_stage1(lm, stage1)


# -- the named presets ------------------------------------------------------------------
def test_named_presets_record_the_released_configs():
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PRESETS

    from uvim_keras.presets.bundled import BUNDLED_PRESETS

    released = {"panoptic_coco", "depth_nyu", "colorization_imagenet"}
    assert set(UViM.presets) == released | set(BUNDLED_PRESETS)  # bundled: complete UViMs
    assert set(PRESETS) == released | {n + "_stage1" for n in released}
    assert set(UViMStage1.presets) == set(PRESETS) | set(BUNDLED_PRESETS)
    base = "https://storage.googleapis.com/big_vision/uvim/"
    expected = {"panoptic": ("panoptic", {"PQ": 43.1}, 0.0),
                "depth": ("depth", {"RMSE": 0.463}, 0.0),
                "colorization": ("color", {"FID": 16.99}, 1.0)}
    for name, spec in PRESETS.items():
        prefix, metrics, temperature = expected[spec.task]
        s1 = spec.stage1_config
        assert spec.stage1_url == f"{base}{prefix}_stageI_params.npz"
        assert (s1["input_size"], s1["patch_size"], s1["code_len"], s1["dict_size"]) == (
            [512, 512], [16, 16], 256, 4096)
        assert (s1["width"], s1["enc_depth"], s1["dec_depth"], s1["num_heads"], s1["mlp_dim"],
                s1["codeword_dim"]) == (768, 6, 12, 12, 3072, 768)
        assert s1["with_encoder_ctx"] and s1["with_decoder_ctx"] and s1["bottleneck_resize"]
        assert s1["code_dropout"] == "random"
        assert spec.temperature == temperature
        if spec.kind == "uvim":
            assert spec.stage2_url == f"{base}{prefix}_stageII_params.npz"
            assert spec.metrics == metrics
            lm = spec.lm_config
            assert (lm["num_layers"], lm["emb_dim"], lm["num_heads"], lm["mlp_dim"],
                    lm["vocab_size"], lm["seq_len"], lm["posemb_type"], lm["patches"]) == (
                24, 1024, 16, 4096, 4097, 256, "learn", {"size": [16, 16]})
        else:
            assert spec.stage2_url is None and spec.lm_config is None
    assert PRESETS["panoptic_coco"].stage1_config["inputs"] == {
        "semantics": [134, 256], "instances": [100, 256]}
    assert PRESETS["depth_nyu"].stage1_config["inputs"] == {"depth": [256, 256]}
    assert PRESETS["depth_nyu"].task_config == {"min_depth": 1e-3, "max_depth": 10.0}
    assert PRESETS["colorization_imagenet"].stage1_config["inputs"] == {"color": [3, 256]}


def test_preset_names_do_not_collide_with_keras_hub():
    import keras_hub  # noqa: F401  (fills keras-hub's registry)
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    from uvim_keras.presets import PRESETS

    assert len(BUILTIN_PRESETS) > 100
    assert not set(PRESETS) & set(BUILTIN_PRESETS)


def test_importing_uvim_keras_does_not_import_keras_hub():
    import sys

    from common import run_command

    code = "import sys, uvim_keras; print('keras_hub' in sys.modules, 'tensorflow' in sys.modules)"
    out = run_command([sys.executable, "-c", code], backend="jax")
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_cache_root_is_under_keras_home(monkeypatch, tmp_path):
    from uvim_keras.presets import cache

    monkeypatch.delenv("UVIM_KERAS_CACHE", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert cache.cache_root() == str(tmp_path / "kh" / "uvim_keras")
    assert cache.preset_cache_path("panoptic_coco") == str(
        tmp_path / "kh" / "uvim_keras" / "presets" / "panoptic_coco")


# -- first use: download -> cache -> convert -> load ----------------------------------
@pytest.mark.slow
@pytest.mark.multibackend
def test_first_use_downloads_converts_caches_then_loads_offline(server, cache_dir, registered):
    from uvim_keras import UViM, UViMStage1

    from uvim_keras.presets import cache

    spec = registered(fixture_spec("test_fixture_panoptic", server))
    io_file, _ = stage2_meta()
    # Leftovers of a killed download and a killed conversion are not trusted.
    part = cache.download_path(spec.stage1_url) + ".x1y2.part"
    os.makedirs(os.path.dirname(part))
    with open(part, "wb") as f:
        f.write(b"PK half a file")
    os.makedirs(cache_dir / "presets" / f".tmp-{spec.name}~killed")
    (cache_dir / "presets" / f".tmp-{spec.name}~killed" / "config.json").write_text("{}")
    before = len(server.requests)
    uvim = UViM.from_preset(spec.name, progress=False)
    assert sorted(server.requests[before:]) == ["/stageII_params.npz",
                                                "/stageI_panoptic_params.npz"]
    image = io_file["inputs/image"]
    np.testing.assert_array_equal(uvim.predict(image, verbose=0), io_file["e2e/panoptic"])
    np.testing.assert_array_equal(to_numpy(uvim.lm.generate(image)), io_file["e2e/code"])

    folder = cache_dir / "presets" / spec.name
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "metadata.json",
            "README.md", "uvim_preset.json"} <= set(os.listdir(folder))
    # Raw files are removed after conversion, and so are the leftovers (whoever
    # holds the cache lock knows no other process is writing them); the size
    # and sha256 of the first good downloads stay, to check later downloads.
    assert _files_under(cache_dir / "downloads") == sorted(
        os.path.basename(cache.pin_path(u)) for u in spec.urls)
    assert not [e for e in os.listdir(cache_dir / "presets") if e.startswith(".")]
    info = json.loads((folder / "uvim_preset.json").read_text())
    assert info["metrics"] == {"PQ": 12.5} and info["kind"] == "uvim"
    assert set(info["files"]) == {"config.json", "model.weights.h5", "preprocessor.json",
                                  "task.json", "task.weights.h5"}
    assert [f["url"] for f in info["source_files"]] == spec.urls

    # Later uses: no request at all, same model.
    n = len(server.requests)
    again = UViM.from_preset(spec.name)
    stage1 = UViMStage1.from_preset(spec.name)
    assert len(server.requests) == n
    for a, b in zip(uvim.weights, again.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    assert isinstance(stage1, UViMStage1)
    np.testing.assert_array_equal(to_numpy(stage1.quantizer.counts),
                                  to_numpy(uvim.stage1.quantizer.counts))


def test_stage1_named_preset_and_sibling_reuse(server, cache_dir, registered):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PresetError

    s1_spec = registered(fixture_spec("test_fixture_s1", server, complete=False))
    full = registered(fixture_spec("test_fixture_full", server))
    n = len(server.requests)
    stage1 = UViMStage1.from_preset(s1_spec.name, progress=False)
    assert server.requests[n:] == ["/stageI_panoptic_params.npz"]
    assert not os.path.exists(cache_dir / "presets" / full.name)
    with pytest.raises(PresetError, match="stage-I preset.*complete model is 'test_fixture_full'"):
        UViM.from_preset(s1_spec.name)
    # The complete preset reuses the cached stage-I preset: only the LM is fetched.
    n = len(server.requests)
    uvim = UViM.from_preset(full.name, progress=False)
    assert server.requests[n:] == ["/stageII_params.npz"]
    io_file, _ = stage2_meta()
    np.testing.assert_array_equal(uvim.predict(io_file["inputs/image"], verbose=0),
                                  io_file["e2e/panoptic"])
    np.testing.assert_array_equal(to_numpy(uvim.stage1.quantizer.dictionary),
                                  to_numpy(stage1.quantizer.dictionary))


def test_load_weights_false_builds_without_download(server, cache_dir, registered):
    from uvim_keras import UViM

    spec = registered(fixture_spec("test_fixture_noweights", server))
    n = len(server.requests)
    uvim = UViM.from_preset(spec.name, load_weights=False)
    assert len(server.requests) == n
    assert uvim.lm.num_layers == 2 and uvim.stage1.oracle_num_layers == 1
    assert not os.path.exists(cache_dir / "presets" / spec.name)


def test_truncated_download_fails_clearly_and_leaves_nothing(server, cache_dir, registered):
    from uvim_keras import UViM
    from uvim_keras.presets import DownloadError

    data = fixture_bytes("stageII_params.npz")
    server.files["/cut/stageII_params.npz"] = data
    server.truncate["/cut/stageII_params.npz"] = len(data) // 2
    spec = registered(fixture_spec("test_fixture_cut", server, stage2_path="/cut/stageII_params.npz"))
    with pytest.raises(DownloadError) as err:
        UViM.from_preset(spec.name, progress=False)
    message = str(err.value)
    assert server.url("/cut/stageII_params.npz") in message
    assert "broke off" in message
    assert "uvim-keras convert --preset test_fixture_cut --stage1 stageI_panoptic_params.npz " \
           "--stage2 stageII_params.npz" in message
    assert "curl -fLo stageII_params.npz " + server.url("/cut/stageII_params.npz") in message
    leftovers = [f for f in _data_files_under(cache_dir)
                 if not f.endswith("stageI_panoptic_params.npz")]
    assert leftovers == []  # no partial file, no preset folder
    assert not os.path.exists(cache_dir / "presets" / spec.name)


def test_truncated_download_without_length_is_not_trusted(tmp_path):
    from uvim_keras.presets import DownloadError, cache

    srv = FileServer()
    try:
        data = fixture_bytes("stageII_params.npz")
        srv.files["/x.npz"] = data[: len(data) // 3]  # short file, honest length
        with pytest.raises(DownloadError, match="not give a complete .npz"):
            cache.download(srv.url("/x.npz"), str(tmp_path / "x.npz"), progress=False)
        assert os.listdir(tmp_path) == []
    finally:
        srv.close()


def test_http_error_names_the_url(server, cache_dir, registered):
    from uvim_keras import UViMStage1
    from uvim_keras.presets import DownloadError

    spec = registered(fixture_spec("test_fixture_404", server, stage1_path="/missing.npz",
                                   complete=False))
    with pytest.raises(DownloadError, match=r"HTTP 404.*/missing\.npz|/missing\.npz: HTTP 404"):
        UViMStage1.from_preset(spec.name, progress=False)
    assert _data_files_under(cache_dir) == []


def test_wrong_shape_checkpoint_fails_clearly_and_is_not_trusted(server, cache_dir, registered):
    from uvim_keras import UViMStage1
    from uvim_keras.checkpoints.big_vision import ConversionError

    server.files["/bad/stageI_panoptic_params.npz"] = npz_with_wrong_shape(
        "stageI_panoptic_params.npz", "params/decoder/encoderblock_1/MlpBlock_0/Dense_0/bias")
    spec = registered(fixture_spec("test_fixture_bad", server, complete=False,
                                   stage1_path="/bad/stageI_panoptic_params.npz"))
    with pytest.raises(ConversionError) as err:
        UViMStage1.from_preset(spec.name, progress=False)
    message = str(err.value)
    assert ("params/decoder/encoderblock_1/MlpBlock_0/Dense_0/bias: checkpoint (65,), "
            "model (64,)") in message
    assert "test_fixture_bad" in message and "removed from the cache" in message
    assert _files_under(cache_dir / "downloads") == []
    assert not os.path.exists(cache_dir / "presets" / spec.name)
    assert [d for d in os.listdir(cache_dir / "presets")] == []
    # Once the server has the right file, the next use downloads it again and works.
    server.files["/bad/stageI_panoptic_params.npz"] = fixture_bytes("stageI_panoptic_params.npz")
    n = len(server.requests)
    stage1 = UViMStage1.from_preset(spec.name, progress=False)
    assert server.requests[n:] == ["/bad/stageI_panoptic_params.npz"]
    assert stage1.dict_size == 16


def test_handle_errors(tmp_path):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PresetError

    with pytest.raises(PresetError, match=r"unknown preset 'no_such_preset'.*panoptic_coco"):
        UViM.from_preset("no_such_preset")
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(PresetError, match=r"is a file, not a preset folder.*uvim-keras convert"):
        UViMStage1.from_preset(str(tmp_path / "weights.npz"))
    with pytest.raises(PresetError, match=r"not a preset \(no config.json\)"):
        UViM.from_preset(str(tmp_path))
    with pytest.raises(PresetError, match="stage-I preset.*Load it with UViMStage1"):
        UViM.from_preset("panoptic_coco_stage1")


# -- keras-hub round trips --------------------------------------------------------------
@pytest.mark.multibackend
def test_uvim_preset_round_trip_and_layout(tmp_path, tiny_uvim):
    from uvim_keras import UViM, UViMStage1

    path = tmp_path / "uvim"
    tiny_uvim.save_to_preset(str(path), metrics={"PQ": 1.5}, description="a tiny test model")
    files = set(os.listdir(path))
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "metadata.json",
            "preprocessor.json", "README.md", "uvim_preset.json"} <= files
    config = json.loads((path / "config.json").read_text())
    task = json.loads((path / "task.json").read_text())
    assert config["registered_name"] == "uvim_keras>UViMStage1Backbone"
    assert task["registered_name"] == "uvim_keras>UViMImageSegmenter"  # a panoptic UViM
    assert json.loads((path / "metadata.json").read_text())["tasks"] == ["ImageSegmenter"]
    assert task["config"]["lm"]["registered_name"] == "uvim_keras>GuidingCodeLM"

    loaded = UViM.from_preset(str(path))
    assert isinstance(loaded, UViM)
    images = panoptic_batch(2)["image"]
    np.testing.assert_array_equal(loaded.predict(images, verbose=0),
                                  tiny_uvim.predict(images, verbose=0))
    for a, b in zip(tiny_uvim.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    # The backbone alone is the stage-I model, VQ state included.
    stage1 = UViMStage1.from_preset(str(path))
    assert isinstance(stage1, UViMStage1)
    for name in ("dictionary", "counts"):
        np.testing.assert_array_equal(to_numpy(getattr(stage1.quantizer, name)),
                                      to_numpy(getattr(tiny_uvim.quantizer, name)))
    assert stage1.get_config() == {**tiny_uvim.stage1.get_config(), "name": stage1.name}


def _old_preset(tmp_path, layout):
    """A copy of a preset written by uvim-keras before weights_layout 3 (made
    with that code: tests/fixtures/weights_layout2); layout 1 transposes its
    MLP kernels back to (in, out) and drops the recorded layout."""
    from uvim_keras.presets import layout as layouts

    path = tmp_path / f"layout{layout}"
    shutil.copytree(LAYOUT2 / "preset", path)
    if layout == 1:
        for name in os.listdir(path):
            if name.endswith(".weights.h5"):
                layouts.transpose_mlp_kernels(os.path.join(path, name))
        info = json.loads((path / "uvim_preset.json").read_text())
        del info["weights_layout"]
        (path / "uvim_preset.json").write_text(json.dumps(info))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("layout", [1, 2])
def test_older_weights_layout_is_refused_then_upgraded(tmp_path, layout):
    from uvim_keras import UViM
    from uvim_keras.presets import PresetError, WEIGHTS_LAYOUT, upgrade_weights_layout

    path = _old_preset(tmp_path, layout)
    with pytest.raises(PresetError, match=rf"older uvim-keras \(weights_layout {layout}\).*"
                                          r"upgrade_weights_layout"):
        UViM.from_preset(str(path))
    # 3 attention layers with biases (8 arrays), 2 without (4); 4 MLPs (2 kernels)
    assert upgrade_weights_layout(path) == 3 * 8 + 2 * 4 + (8 if layout == 1 else 0)
    assert sorted(os.listdir(tmp_path)) == [f"layout{layout}"]  # no staging folders left
    assert json.loads((path / "uvim_preset.json").read_text())["weights_layout"] == WEIGHTS_LAYOUT
    assert upgrade_weights_layout(path) == 0  # current: nothing to do
    loaded = UViM.from_preset(str(path))
    expected = np.load(LAYOUT2 / "layout2_expected.npz")
    logits = loaded.lm({"image": expected["images"], "codes": expected["rand_codes"]})
    np.testing.assert_allclose(to_numpy(logits), expected["lm_logits"], atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(expected["images"], verbose=0),
                                  expected["outputs"])
    # a folder from a newer uvim-keras is refused too, not misread
    info = json.loads((path / "uvim_preset.json").read_text())
    (path / "uvim_preset.json").write_text(json.dumps({**info, "weights_layout": 99}))
    with pytest.raises(PresetError, match="weights_layout 99, written by a newer uvim-keras"):
        UViM.from_preset(str(path))


def test_upgraded_files_hold_what_a_fresh_save_holds(tmp_path):
    """Every array lands where Keras itself would write it (same paths, shapes)."""
    import h5py

    from uvim_keras import UViM
    from uvim_keras.presets import upgrade_weights_layout

    path = _old_preset(tmp_path, 1)
    upgrade_weights_layout(path)
    fresh = tmp_path / "fresh"
    UViM.from_preset(str(path)).save_to_preset(str(fresh))

    def arrays(file):
        found = {}
        with h5py.File(file) as f:
            f.visititems(lambda n, o: found.__setitem__(n, o.shape)
                         if isinstance(o, h5py.Dataset) else None)
        return found

    for name in ("model.weights.h5", "task.weights.h5"):
        assert arrays(path / name) == arrays(fresh / name), name


def test_outdated_cached_conversion_is_upgraded_when_loaded(tmp_path, cache_dir):
    from uvim_keras.presets import WEIGHTS_LAYOUT, api, cache

    _ = cache_dir
    path = cache.preset_cache_path("some_named_preset")
    shutil.copytree(_old_preset(tmp_path, 1), path)

    def layout():
        return json.loads(open(os.path.join(path, "uvim_preset.json")).read()).get("weights_layout")

    assert cache.cached_preset("some_named_preset") == path
    assert layout() is None  # listing the cache changes nothing
    assert api.cached("some_named_preset") == path
    assert layout() == WEIGHTS_LAYOUT


@pytest.mark.multibackend
def test_stage1_preset_round_trip(tmp_path):
    from uvim_keras import UViM, UViMStage1
    from uvim_keras.presets import PresetError

    model = tiny_stage1(code_dropout="linear", commitment_weight=0.25)
    randomize_with_state(model, 3)  # non-trivial weights, EMA dictionary and counts
    batch = panoptic_batch(2)
    path = tmp_path / "stage1"
    model.save_to_preset(str(path))
    assert "task.json" not in os.listdir(path)
    loaded = UViMStage1.from_preset(str(path))
    assert isinstance(loaded, UViMStage1)
    assert loaded.get_config() == {**model.get_config(), "name": loaded.name}
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    out_a, out_b = model(batch, training=False), loaded(batch, training=False)
    np.testing.assert_array_equal(to_numpy(out_a["codes"]), to_numpy(out_b["codes"]))
    for key in out_a["logits"]:
        np.testing.assert_allclose(to_numpy(out_a["logits"][key]),
                                   to_numpy(out_b["logits"][key]), atol=1e-6)
    with pytest.raises(PresetError, match="stage-I preset"):
        UViM.from_preset(str(path))


@pytest.mark.multibackend
def test_keras_hub_generic_loaders(tmp_path, tiny_uvim):
    import keras_hub

    from uvim_keras import keras_hub_models as hub

    path = tmp_path / "uvim"
    tiny_uvim.save_to_preset(str(path))
    backbone = keras_hub.models.Backbone.from_preset(str(path))
    assert isinstance(backbone, hub.UViMStage1Backbone)
    task = hub.UViMStage2Task.from_preset(str(path))
    assert isinstance(task.backbone, hub.UViMStage1Backbone)
    uvim = task.to_uvim()
    assert uvim.stage1 is task.backbone.stage1 and uvim.lm is task.lm
    for a, b in zip(tiny_uvim.weights, uvim.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


def test_uvim_without_stage1_cannot_make_a_preset(tmp_path, tiny_uvim):
    from uvim_keras import UViM
    from uvim_keras.presets import PresetError

    parts = UViM(tiny_uvim.lm, tiny_uvim.base_model, tiny_uvim.quantizer, tiny_uvim.task)
    with pytest.raises(PresetError, match="UViM.from_stage1"):
        parts.save_to_preset(str(tmp_path / "x"))


# -- Hugging Face Hub -------------------------------------------------------------------
def _fake_hf_cache(hub_cache, repo_id, preset_dir):
    """huggingface_hub's cache layout for one repo at one commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(preset_dir, repo / "snapshots" / commit)
    return repo


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    hub_cache = home / "hub"
    hub_cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import; the test process imported it already.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    del huggingface_hub
    return hub_cache


def test_hf_handle_loads_from_the_offline_hub_cache(tmp_path, tiny_uvim, hf_offline):
    from uvim_keras import UViM, UViMStage1

    local = tmp_path / "preset"
    tiny_uvim.save_to_preset(str(local))
    _fake_hf_cache(hf_offline, "someone/tiny-uvim", local)
    loaded = UViM.from_preset("hf://someone/tiny-uvim")
    images = panoptic_batch(2)["image"]
    np.testing.assert_array_equal(loaded.predict(images, verbose=0),
                                  tiny_uvim.predict(images, verbose=0))
    stage1 = UViMStage1.from_preset("hf://someone/tiny-uvim")
    np.testing.assert_array_equal(to_numpy(stage1.quantizer.counts),
                                  to_numpy(tiny_uvim.quantizer.counts))
    # A stage-I repo: the missing task.json is found missing offline, clearly.
    tiny_uvim.stage1.save_to_preset(str(tmp_path / "s1"))
    _fake_hf_cache(hf_offline, "someone/tiny-stage1", tmp_path / "s1")
    assert isinstance(UViMStage1.from_preset("hf://someone/tiny-stage1"), UViMStage1)
    from uvim_keras.presets import PresetError

    with pytest.raises(PresetError, match="stage-I preset"):
        UViM.from_preset("hf://someone/tiny-stage1")


def test_upload_to_hf_sends_the_preset_and_a_model_card(tmp_path, tiny_uvim, monkeypatch):
    import huggingface_hub

    import uvim_keras

    sent = {}

    def create_repo(self, repo_id, repo_type=None, exist_ok=False, **kwargs):
        sent["create_repo"] = (repo_id, repo_type, exist_ok)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, repo_type=None, ignore_patterns=None, **kwargs):
        sent["upload_folder"] = (repo_id, repo_type)
        sent["files"] = {f: (pathlib_read(folder_path, f)) for f in _files_under(folder_path)}
        return "commit-url"

    def pathlib_read(folder, name):
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()

    def no_network(*args, **kwargs):
        raise AssertionError("unexpected Hub call")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    for name in ("upload_file", "create_commit", "file_exists", "repo_info"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)

    local = tmp_path / "preset"
    tiny_uvim.save_to_preset(str(local))
    result = uvim_keras.upload_preset("hf://me/tiny-uvim", str(local), metrics={"PQ": 7.25},
                                      dataset="COCO (tiny)")
    assert result == "commit-url"
    assert sent["create_repo"] == ("me/tiny-uvim", "model", True)
    assert sent["upload_folder"] == ("me/tiny-uvim", "model")
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "metadata.json",
            "README.md", "uvim_preset.json"} <= set(sent["files"])
    card = sent["files"]["README.md"].decode()
    assert card.startswith("---\nlibrary_name: keras-hub\n")
    assert "pipeline_tag: image-segmentation" in card
    assert "type: \"PQ\"" in card and "value: 7.25" in card and "| PQ | 7.25 |" in card
    assert 'uvim_keras.UViM.from_preset("hf://me/tiny-uvim")' in card
    assert "uvim-keras predict --preset hf://me/tiny-uvim" in card
    assert "panoptic segmentation" in card.lower()
    assert 'keras_hub.models.ImageSegmenter.from_preset("hf://me/tiny-uvim")' in card
    assert '- name: "preset"' in card  # the folder's name (no name was given)
    assert json.loads(sent["files"]["uvim_preset.json"])["metrics"] == {"PQ": 7.25}


def test_model_card_names_datasets_and_base_model():
    from uvim_keras.presets import PRESETS
    from uvim_keras.presets.model_card import model_card

    info = PRESETS["depth_nyu"].card_info()
    card = model_card(info, {}, "hf://me/depth")
    header = card.split("---")[1]
    assert 'datasets:\n- "sayakpaul/nyu_depth_v2"' in header
    assert '- name: "depth_nyu"' in header and "base_model" not in header
    assert 'keras_hub.models.DepthEstimator.from_preset("hf://me/depth")' in card
    tuned = model_card({**info, "base_model": "me/uvim-depth"}, {}, "hf://me/tuned")
    assert 'base_model: "me/uvim-depth"' in tuned.split("---")[1]


def test_upload_rejects_bad_folders_and_uris(tmp_path, tiny_uvim):
    import uvim_keras
    from uvim_keras.presets import PresetError

    with pytest.raises(PresetError, match="does not exist"):
        uvim_keras.upload_preset("hf://me/x", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PresetError, match="no config.json"):
        uvim_keras.upload_preset("hf://me/x", str(tmp_path / "empty"))
    tiny_uvim.stage1.save_to_preset(str(tmp_path / "s1"))
    with pytest.raises(PresetError, match="expected hf://"):
        uvim_keras.upload_preset("s3://bucket/x", str(tmp_path / "s1"))


def test_upload_to_kaggle_goes_through_keras_hub(tmp_path, tiny_uvim, monkeypatch):
    import kagglehub

    import uvim_keras

    calls = []
    monkeypatch.setattr(kagglehub, "model_upload", lambda handle, path, *a, **k: calls.append(
        (handle, sorted(os.listdir(path)))))
    tiny_uvim.stage1.save_to_preset(str(tmp_path / "s1"))
    uvim_keras.upload_preset("kaggle://me/uvim/keras/tiny", str(tmp_path / "s1"))
    assert calls and calls[0][0] == "me/uvim/keras/tiny"
    assert {"config.json", "model.weights.h5", "README.md"} <= set(calls[0][1])


def test_atomic_writes_get_the_modes_open_would_give(tmp_path):
    """Preset files and reports written atomically are readable by others as
    with open() (tempfile.mkstemp alone would leave them 0600)."""
    from uvim_keras.presets.layout import write_json_atomic, write_text_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(str(tmp_path / "a.json"), {"a": 1})
        write_text_atomic(str(tmp_path / "b.md"), "b")
    finally:
        os.umask(old)
    for name in ("a.json", "b.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
