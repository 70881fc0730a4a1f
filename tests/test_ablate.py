"""`uvim-keras ablate`: every column of the paper's Table 2, in miniature."""

import json

import pytest


@pytest.mark.slow
def test_quick_ablations_write_every_column(tmp_path):
    from uvim_keras.cli.ablate import COLUMNS, PAPER, run_ablations

    report = run_ablations("panoptic", out=str(tmp_path), seeds=(0,), quick=True, verbose=0)
    saved = json.loads((tmp_path / "ablations.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["columns"]) == list(COLUMNS)
    assert saved["metric"] == "PQ" and saved["seeds"] == [0]
    for column, stages in saved["columns"].items():
        for stage in ("stage1", "stage2"):
            entry = stages[stage]
            if column == "no_oracle" and stage == "stage2":
                assert entry is None  # the base model alone has no stage II
                continue
            assert len(entry["per_seed"]) == 1 and entry["std"] == 0.0
            assert entry["mean"] == entry["per_seed"][0] and 0.0 <= entry["mean"] <= 100.0
    # columns sharing a stage-I model share its stage-I score
    first = {c: saved["columns"][c]["stage1"]["mean"] for c in COLUMNS}
    assert first["default"] == first["from_scratch"] == first["no_autoregression"]
    # every LM column reports its LM's figures on the held-out oracle codes
    lm_columns = [c for c in COLUMNS if saved["columns"][c].get("lm")]
    assert lm_columns == [c for c in COLUMNS if c != "no_oracle"]
    for column in lm_columns:
        assert saved["columns"][column]["lm"]["nll"] > 0
        assert 0 <= saved["columns"][column]["lm"]["greedy_accuracy"] <= 1
    table = (tmp_path / "ablations.md").read_text()
    assert "| greedy words right |" in table
    assert table.count("| stage II (UViM) |") == 2  # ours and the paper's
    assert str(PAPER["panoptic"]["stage2"]["no_autoregression"]) in table
    assert (tmp_path / "ablations_examples.png").stat().st_size > 1000


def test_ablate_command_checks_its_arguments(tmp_path, capsys):
    from uvim_keras.cli import main

    with pytest.raises(SystemExit) as e:
        main(["ablate", "--task", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    rc = main(["ablate", "--quick", "--seeds", "-1", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("uvim-keras ablate: error: seed=-1")
