"""benchmarks/bench_real_scale.py at its tiny config (a smoke test: it runs,
every side and precision reports positive figures; not a measurement).

The run takes 1-3 minutes on 2 cores (a worker process per precision, the
reference's too), so it is marked `large`. big_vision's side is included when
its source and venv are there (UVIM_BIG_VISION_SRC, default /work/bv_src;
UVIM_BIG_VISION_PYTHON, default /work/bv_venv/bin/python; and
bench_big_vision.py in ../shared/bench).
"""

import json
import os
import pathlib
import sys

import pytest

from common import REPO, last_json_line, run_command

SCRIPT = REPO / "benchmarks" / "bench_real_scale.py"
BV_SRC = pathlib.Path(os.environ.get("UVIM_BIG_VISION_SRC", "/work/bv_src"))
BV_PYTHON = pathlib.Path(os.environ.get("UVIM_BIG_VISION_PYTHON", "/work/bv_venv/bin/python"))
BENCH_DIR = REPO.parent / "shared" / "bench"
HAS_REFERENCE = BV_SRC.is_dir() and BV_PYTHON.exists() and (
    BENCH_DIR / "bench_big_vision.py").exists()

PRECISIONS = ("float32", "bfloat16", "int8")
FIGURES = ("predict_b1", "generate_b1", "encode_b1")


@pytest.fixture
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_real_scale

    return bench_real_scale


def test_tiny_config_shrinks_the_released_architecture(bench_module):
    from uvim_keras.presets.registry import get_preset

    for preset in ("panoptic_coco", "depth_nyu", "colorization_imagenet"):
        spec = get_preset(preset)
        released = bench_module.model_configs(preset, "released")
        assert released["stage1"] == spec.stage1_config and released["lm"] == spec.lm_config
        tiny = bench_module.model_configs(preset, "tiny")
        assert tiny["task"] == spec.task
        assert tiny["lm"]["emb_dim"] == tiny["stage1"]["width"] == 64
        assert tiny["lm"]["num_layers"] == tiny["stage1"]["dec_depth"] == 2
        assert tiny["lm"]["input_size"] == tiny["stage1"]["input_size"] == [64, 64]
        assert tiny["lm"]["seq_len"] == tiny["stage1"]["code_len"] == 16
        assert tiny["lm"]["vocab_size"] == tiny["stage1"]["dict_size"] + 1
        assert set(tiny["stage1"]["inputs"]) == set(spec.stage1_config["inputs"])


@pytest.mark.large
def test_tiny_run(tmp_path):
    keras = pytest.importorskip("keras")
    out = tmp_path / "real_scale.json"
    cmd = [sys.executable, str(SCRIPT), "--config", "tiny", "--batches", "1", "--repeats", "1",
           "--bandwidth-mib", "64", "--backend", keras.backend.backend(), "--out", str(out)]
    if HAS_REFERENCE:
        cmd += ["--reference-python", str(BV_PYTHON), "--big-vision", str(BV_SRC),
                "--bench-dir", str(BENCH_DIR)]
    else:
        cmd.append("--skip-reference")
    proc = run_command(cmd, cwd=REPO, timeout=900)
    result = last_json_line(proc.stdout)
    assert json.loads(out.read_text()) == result
    assert "predict_b1" in proc.stdout  # the table before the JSON line

    assert result["config"] == "tiny" and result["preset"] == "panoptic_coco"
    assert result["backend"] == keras.backend.backend()
    assert result["bandwidth"]["gbs"] > 0
    sides = dict(result["ours"])
    assert set(sides) == set(PRECISIONS)
    if HAS_REFERENCE:
        sides["big_vision"] = result["reference"]
    for name, side in sides.items():
        for fig in FIGURES:
            assert side[f"{fig}_s"] > 0 and side[f"{fig}_first_s"] > 0, (name, fig)
        for key in ("weights_bytes", "peak_rss_bytes", "decode_step_bytes", "decoder_bytes",
                    "rss_over_weights", "decode_gbs", "decode_bw_fraction"):
            assert side[key] > 0, (name, key)
        assert side["decode_step_bytes"] <= side["decoder_bytes"]
        assert side["peak_rss_bytes"] > side["weights_bytes"]
    f32, bf16, int8 = (result["ours"][p]["weights_bytes"] for p in PRECISIONS)
    assert bf16 < f32 and int8 < f32
    targets = result["targets"]
    for p in PRECISIONS:
        assert f"{p}_rss_over_weights" in targets and f"{p}_decode_bw_fraction" in targets
        side = result["ours"][p]  # the loop's own fraction when encode was timed
        expected = side.get("decode_loop_bw_fraction", side["decode_bw_fraction"])
        assert targets[f"{p}_decode_bw_fraction"]["value"] == expected
    if HAS_REFERENCE:
        # the same architecture (ours also holds a few seed-generator states)
        assert abs(result["reference"]["weights_bytes"] - f32) <= 0.01 * f32
        for p in PRECISIONS:
            for fig in FIGURES:
                assert result["ratio"][p][fig] > 0 and result["ratio"][p][fig + "_first"] > 0
        assert {"float32_predict_ratio", "int8_predict_ratio",
                "float32_first_call_ratio"} <= set(targets)
    for t in targets.values():
        assert isinstance(t["meets"], bool) and t["value"] > 0
