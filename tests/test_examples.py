"""examples/train_stage1.py and train_stage2.py: the paper's recipes resolve as
big_vision's released configs say, and every task runs end to end with
--smoke on tfds mock data (stage I -> stage1.keras -> stage II) and resumes;
--distribution sets keras.distribution."""

import contextlib
import importlib.util
import io
import json

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

import keras  # noqa: E402

from common import REPO  # noqa: E402

EXAMPLES = REPO / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"uvim_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage1_script = load("train_stage1")
stage2_script = load("train_stage2")


def run(script, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = script.main([str(a) for a in argv])
    return result, out.getvalue()


def recipe(script, *argv):
    return json.loads(run(script, *argv, "--workdir", "unused", "--dry-run")[1])


# (task, stage, variant): batch size, epochs, lr, wd, gradient clipping, total steps
# = round(epochs * train examples / batch), as big_vision's u.steps.
RECIPES = {
    ("panoptic", 1, "paper"): (1024, 1000, 4e-4, 4e-5, 1.0, 111_515),
    ("panoptic", 1, "singlehost"): (128, 100, 4e-4, 4e-5, 1.0, 89_212),
    ("panoptic", 2, "paper"): (512, 200, 1e-3, 1e-6, None, 44_606),
    ("panoptic", 2, "singlehost"): (32, 50, 1e-3, 1e-6, None, 178_423),
    ("depth", 1, "paper"): (1024, 200, 1e-3, 1e-5, 1.0, 9_294),
    ("depth", 1, "singlehost"): (128, 50, 1e-3, 1e-5, 1.0, 18_588),
    ("depth", 2, "paper"): (512, 50, 1e-3, 1e-6, None, 4_647),
    ("depth", 2, "singlehost"): (32, 20, 1e-3, 1e-6, None, 29_740),
    ("colorization", 1, "paper"): (1024, 100, 4e-4, 4e-5, 1.0, 124_714),
    ("colorization", 1, "singlehost"): (128, 20, 4e-4, 4e-5, 1.0, 199_542),
    ("colorization", 2, "paper"): (512, 50, 1e-3, 1e-6, None, 124_714),
    ("colorization", 2, "singlehost"): (32, 20, 1e-3, 1e-6, None, 798_169),
}


def test_paper_recipes():
    for (task, stage, variant), expected in RECIPES.items():
        script = stage1_script if stage == 1 else stage2_script
        flags = ["--singlehost"] if variant == "singlehost" else []
        r = recipe(script, "--task", task, *flags)
        got = (r["batch_size"], r["epochs"], r["lr"], r["wd"], r["grad_clip_norm"],
               r["total_steps"])
        assert got == expected, (task, stage, variant)
        assert r["warmup_steps"] == 4_000 and r["seed"] == 0 and r["log_every"] == 50
        assert r["checkpoint_every"] == 1_000
        if stage == 1:
            assert r["model"] == {**r["model"], "input_size": 512, "patch_size": 16,
                                  "code_len": 256, "dict_size": 4096, "codeword_dim": 768,
                                  "width": 768, "oracle_num_layers": 6, "base_num_layers": 12,
                                  "num_heads": 12, "mlp_dim": 3072, "code_dropout": "random",
                                  "dict_momentum": 0.995}
            assert r["keep_every_n_steps"] == 20_000
        else:  # ViT-L/16
            assert r["model"] == {"input_size": 512, "patch_size": 16, "width": 1024,
                                  "num_layers": 24, "num_heads": 16, "mlp_dim": 4096,
                                  "posemb": "learn"}
            assert r["encoder_lr_multiplier"] == 0.1 and r["keep_every_n_steps"] == 5_000
    assert recipe(stage1_script, "--task", "panoptic", "--batch-size", "64", "--steps",
                  "10")["total_steps"] == 10
    short = recipe(stage2_script, "--task", "depth", "--epochs", "1")
    assert short["total_steps"] == 93 and short["warmup_steps"] == 9  # clamped below total


def read_log(workdir):
    return [json.loads(x) for x in (workdir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["panoptic", "depth", "colorization"])
def test_smoke_stage1_then_stage2(task, tmp_path):
    w1, w2 = tmp_path / "stage1", tmp_path / "stage2"
    result, out = run(stage1_script, "--task", task, "--smoke", "--workdir", w1, "--verbose", 0)
    assert (result.start_step, result.step) == (0, 2)
    assert (w1 / "stage1.keras").exists()
    assert sorted(p.name for p in (w1 / "checkpoints").iterdir()) == [
        "ckpt-000000001", "ckpt-000000002"]
    log = read_log(w1)
    assert [x["step"] for x in log] == [1, 2]
    assert {"loss", "codebook_max_ratio", "codebook_zeros_ratio", "learning_rate"} <= set(log[0])

    # The same command again resumes from the last checkpoint: nothing left to do.
    # (That a resumed run continues exactly: tests/test_training_resume.py.)
    result, out = run(stage1_script, "--task", task, "--smoke", "--workdir", w1, "--verbose", 0)
    assert (result.start_step, result.step, result.history) == (2, 2, None)
    assert "resumed from" in out and "ckpt-000000002" in out
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(stage1_script, "--task", task, "--smoke", "--workdir", w1, "--no-resume")

    result, out = run(stage2_script, "--task", task, "--smoke", "--workdir", w2,
                      "--stage1", w1 / "stage1.keras", "--verbose", 0)
    assert (result.start_step, result.step) == (0, 2)
    assert "encoder learning rate x 0.1 on 21 of 45 LM variables" in out
    assert (w2 / "lm.keras").exists() and (w2 / "uvim.keras").exists()
    assert [x["step"] for x in read_log(w2)] == [1, 2]
    uvim = keras.saving.load_model(w2 / "uvim.keras", compile=False)
    assert uvim.task.name == task and uvim.lm.code_len == 4


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution on JAX")
def test_distribution_flag():
    common = stage1_script.common
    n = len(keras.distribution.list_devices())
    try:
        data = common.set_distribution("data")
        assert isinstance(data, keras.distribution.DataParallel)
        assert keras.distribution.distribution() is data
        model = common.set_distribution("model", mesh=f"1,{n}")
        assert isinstance(model, keras.distribution.ModelParallel)
        assert model.device_mesh.shape == (1, n)
        assert common.set_distribution("model").device_mesh.shape == (1, n)  # default mesh
    finally:
        keras.distribution.set_distribution(None)
    assert common.set_distribution("none") is None


def test_reuse_host_memory_flag(monkeypatch):
    from uvim_keras.runtime import host_memory

    common = stage1_script.common
    calls = []
    monkeypatch.setattr(host_memory, "reuse_host_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(keras.utils, "set_random_seed", lambda seed: None)
    cfg = {"train": {"seed": 0}}
    for flag, expected in (([], []), (["--reuse-host-memory"], [1])):
        args = common.base_parser("x").parse_args(
            ["--task", "depth", "--workdir", "unused", *flag])
        common.setup(args, cfg)
        assert calls == expected
        calls.clear()


def test_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            run(stage1_script, "--task", "segmentation", "--workdir", tmp_path)
    with pytest.raises(SystemExit, match="--stage1 is required"):
        run(stage2_script, "--task", "depth", "--workdir", tmp_path, "--steps", 1)


def test_resumed_run_with_another_recipe_says_what_changed(tmp_path):
    common = stage1_script.common
    cfg = common.configs.get_config("depth", 1, "smoke")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        common.write_recipe(cfg, str(tmp_path))
        cfg["train"]["lr"] = 1e-2
        common.write_recipe(cfg, str(tmp_path))
    assert "recipe differs" in out.getvalue() and "lr 0.001 -> 0.01" in out.getvalue()
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1e-2
