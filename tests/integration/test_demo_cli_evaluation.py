"""``nnssl_demo`` probes its encoder during pre-training and ends with the random-init vs pre-trained table."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_probes_during_training_and_prints_the_table(tmp_path, monkeypatch, capsys) -> None:
    from nnssl.cli.demo import main

    for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
        monkeypatch.setenv(name, str(tmp_path / "unused"))  # restored after the test; the demo sets its own
    assert main(["--output_dir", str(tmp_path), "--set", "train.num_epochs=4", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "pre-trained" in out and "probe/dice_cerebellum" in out
    folder = tmp_path / "nnssl_results" / "Dataset001_Demo" / "DemoMAE_ResEncTiny__nnsslPlans__onemmiso" / "fold_all"
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    logged = [line["probe/mean_dice"] for line in lines if "probe/mean_dice" in line]
    assert len(logged) == 1 and 0.0 < logged[0] <= 1.0  # epoch 3 (every 4th epoch) is the last
    # the table's pre-trained column is the same probe on the same weights: the same number
    row = next(r for r in out.splitlines() if r.startswith("probe/mean_dice"))
    assert abs(float(row.split()[-1]) - logged[0]) < 1e-3
