"""End to end on the shipped demo data: plan, preprocess, nnssl_train on CPU, then --c."""

from __future__ import annotations

import json

import torch

from nnssl.cli.train import main


def test_demo_training_end_to_end(demo_raw_dataset, nnssl_env) -> None:
    from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess

    plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"])
    args = [
        "1",
        "onemmiso",
        "-tr",
        "DemoMAE_ResEncTiny",
        "-device",
        "cpu",
        "--set",
        "train.iterations_per_epoch=2",
        "--set",
        "train.val_iterations=1",
    ]
    assert main([*args, "--set", "train.num_epochs=1"]) == 0
    folder = nnssl_env["nnssl_results"] / "Dataset001_Demo" / "DemoMAE_ResEncTiny__nnsslPlans__onemmiso" / "fold_all"
    for name in ("config.json", "plans.json", "adaptation_plan.json", "metrics.jsonl", "progress.png"):
        assert (folder / name).is_file(), name
    assert (folder.parent / "adaptation_plan.json").is_file()
    assert list(folder.glob("training_log_*.txt"))
    final = torch.load(folder / "checkpoint_final.pth", weights_only=True)
    assert final["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"]
    used = final["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]
    assert used["patch_size"] == [48, 48, 48]
    # how the pre-training data was normalised travels with the weights (nnU-Net's like_nnssl: z-score everywhere)
    assert used["normalization_schemes"] == ["ZScoreNormalization"] and used["use_mask_for_norm"] == [False]
    assert used["normalization_by_modality"] == {}
    assert final["current_epoch"] == 1 and final["config"]["preset"] == "DemoMAE_ResEncTiny"
    assert main([*args, "--set", "train.num_epochs=2", "--c"]) == 0
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert torch.load(folder / "checkpoint_final.pth", weights_only=True)["global_step"] == 4
