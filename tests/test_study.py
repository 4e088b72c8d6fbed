import importlib.util
import json
import os

import pytest
import torch
from detectron2.modeling import build_model
from util import REPO, random_batch, tiny_cfg

from ssprl_d2 import study
from ssprl_d2.study import (
    DEFAULT_PRETRAIN_CONFIG,
    PRETRAINED_VARIANTS,
    VARIANTS,
    aggregate,
    evaluate_run,
    finished_records,
    paired_differences,
    paired_table,
    pretrain_config,
    pretrained_checkpoint,
    run_dir,
    summary_table,
)
from ssprl_d2.transfer import RESULT_FILE, StaleResultError, cached_result, config_files_sha256


def test_aggregate_mean_and_sample_std():
    runs = [
        {"variant": "a", "seed": s, "protocol": "linear", "mAP": v}
        for s, v in enumerate([10.0, 12.0, 14.0])
    ] + [{"variant": "b", "seed": 0, "protocol": "linear", "mAP": 5.0}]
    summary = aggregate(runs)
    assert summary["a"]["linear"] == {"mean": 12.0, "std": 2.0, "n": 3}
    assert summary["b"]["linear"]["std"] == 0.0
    table = summary_table(summary, ["linear", "semi"])
    assert "| a | 12.0 +- 2.0 (n=3) | - |" in table


@pytest.mark.parametrize("variant", PRETRAINED_VARIANTS)
def test_every_pretraining_variant_builds_and_trains_a_step(variant):
    opts = VARIANTS[variant]
    if pretrain_config(variant) != DEFAULT_PRETRAIN_CONFIG:
        from util import mls_batch, mls_tiny_cfg

        assert variant == "MLS"
        cfg = mls_tiny_cfg()
        cfg.merge_from_list(list(opts))
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        model(mls_batch(4, seed=0))  # the first step fills the dictionaries
        losses = model(mls_batch(4, seed=1))
        assert set(losses) == {"loss_infonce", "loss_ml"}
        sum(losses.values()).backward()
        return
    cfg = tiny_cfg()
    cfg.merge_from_list(list(opts))
    if variant.startswith("SwAV"):
        cfg.MODEL.SSPRL.NUM_PROTOTYPES = [8]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    losses = model(random_batch(model.layout, 4))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    if variant.startswith("SwAV"):
        assert set(losses) == {"loss_pyr_s0"}
    if variant == "L_pyr only":
        assert losses["loss_cross_s1"].item() == 0.0
    if variant == "L_cross only":
        assert losses["loss_pyr_s1"].item() == 0.0 and losses["loss_cross_s1"].item() > 0


def test_vit_variants_are_local_global_and_its_cls_only_ablation():
    import os

    from detectron2.config import get_cfg
    from util import REPO

    from ssprl_d2 import add_ssprl_config
    from ssprl_d2.study import VIT_FINETUNE_CONFIG, VIT_PRETRAIN_CONFIG, VIT_VARIANTS

    quick = os.path.join(REPO, "configs", "quick_schedules")
    assert os.path.exists(os.path.join(quick, VIT_FINETUNE_CONFIG))
    assert VIT_VARIANTS["ViT random init"] is None
    for variant, patch_loss in (("local-global", True), ("CLS-only (DINO)", False)):
        cfg = get_cfg()
        add_ssprl_config(cfg)
        cfg.merge_from_file(os.path.join(quick, VIT_PRETRAIN_CONFIG))
        cfg.merge_from_list(VIT_VARIANTS[variant] + ["MODEL.VIT.DEPTH", "1"])
        assert build_model(cfg).patch_loss is patch_loss


def test_a_finished_job_is_read_back_and_not_run_again(tmp_path):
    calls = []

    def run(job):
        calls.append(job)
        return {"box AP": 1.0, "mask AP": 2.0} if job == "maskrcnn" else {"kNN mAP": 3.0}

    spec = lambda job: {"job": job, "iters": 5}  # noqa: E731
    protocols = ["kNN mAP", "box AP", "mask AP"]
    first = evaluate_run("v", 0, str(tmp_path), protocols, spec, run)
    assert calls == ["knn", "maskrcnn"]  # one fine-tune gives box and mask AP
    assert (tmp_path / "maskrcnn" / RESULT_FILE).is_file()
    again = evaluate_run("v", 0, str(tmp_path), protocols, spec, run)
    assert calls == ["knn", "maskrcnn"] and again == first
    assert [(r["protocol"], r["mAP"]) for r in first] == [
        ("kNN mAP", 3.0), ("box AP", 1.0), ("mask AP", 2.0)]


def test_a_fake_finished_result_is_read_back(tmp_path):
    directory = run_dir(str(tmp_path), "SwAV (scale 0 only)", 1)
    assert directory == str(tmp_path / "seed1" / "SwAV_scale_0_only")
    job = tmp_path / "seed1" / "SwAV_scale_0_only" / "linear"
    job.mkdir(parents=True)
    spec = {"opts": ("SOLVER.MAX_ITER", "60")}  # a tuple compares equal to the JSON list
    (job / RESULT_FILE).write_text(json.dumps({"spec": {"opts": ["SOLVER.MAX_ITER", "60"]},
                                               "metrics": {"linear mAP": 42.5}}))

    def must_not_run():
        raise AssertionError("a finished job ran again")

    assert cached_result(str(job), spec, must_not_run) == {"linear mAP": 42.5}
    with pytest.raises(StaleResultError, match="another --out"):
        cached_result(str(job), {"opts": ["SOLVER.MAX_ITER", "800"]}, must_not_run)
    # the table: finished jobs only, stale ones left out
    records = finished_records(["random init", "SwAV (scale 0 only)"], [0, 1],
                               ["linear mAP", "kNN mAP"], str(tmp_path), lambda v, s, j: spec)
    assert records == [{"variant": "SwAV (scale 0 only)", "seed": 1, "protocol": "linear mAP",
                        "mAP": 42.5}]
    assert finished_records(["SwAV (scale 0 only)"], [1], ["linear mAP"], str(tmp_path),
                            lambda v, s, j: {"opts": []}) == []


def test_pretraining_runs_once_and_keeps_only_the_final_checkpoint(tmp_path):
    pre = tmp_path / "pretrain"
    calls = []

    def pretrain():
        calls.append(1)
        (pre / "model_0000199.pth").write_bytes(b"x")
        (pre / "model_final.pth").write_bytes(b"x")

    spec = {"iters": 800}
    final = pretrained_checkpoint(str(pre), spec, pretrain)
    assert final == str(pre / "model_final.pth") and calls == [1]
    assert not (pre / "model_0000199.pth").exists()
    assert pretrained_checkpoint(str(pre), spec, pretrain) == final and calls == [1]
    with pytest.raises(StaleResultError):
        pretrained_checkpoint(str(pre), {"iters": 80}, pretrain)
    with pytest.raises(RuntimeError, match="model_final"):
        pretrained_checkpoint(str(tmp_path / "other"), spec, lambda: None)
    # checkpoints of an unknown budget (no spec.json) are not taken for this one
    old = tmp_path / "old"
    old.mkdir()
    (old / "last_checkpoint").write_text("model_final.pth")
    (old / "model_final.pth").write_bytes(b"x")
    with pytest.raises(StaleResultError, match="without spec.json"):
        pretrained_checkpoint(str(old), spec, pretrain)


def _run_study():
    spec = importlib.util.spec_from_file_location(
        "run_study", os.path.join(REPO, "tools", "run_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag,valid", [("--variants", "MLS"), ("--protocols", "kNN mAP")])
def test_unknown_variant_or_protocol_is_an_argparse_error(flag, valid, capsys):
    with pytest.raises(SystemExit) as e:
        _run_study().main([flag, valid, "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    assert ("'SS-PRL (full)'" if flag == "--variants" else "'kNN mAP'") in err


def test_help_lists_variants_and_protocols(capsys):
    with pytest.raises(SystemExit) as e:
        _run_study().main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "'semi-sup 10% mAP'" in out and "'MLS'" in out


def test_random_init_knn_study_end_to_end_and_resumed(tmp_path, monkeypatch):
    out, results = tmp_path / "out", tmp_path / "results"
    argv = ["--variants", "random init", "--protocols", "kNN mAP", "--seeds", "0",
            "--out", str(out), "--results", str(results)]
    tool = _run_study()
    assert tool.main(argv) == 0
    stored = json.loads((out / "seed0" / "random_init" / "knn" / "result.json").read_text())
    assert set(stored["metrics"]) == {"kNN mAP"}
    table = (results / "study.md").read_text()
    assert "| variant | kNN mAP |" in table and "| random init |" in table and "(n=1)" in table

    def must_not_run(*args):
        raise AssertionError("a finished job ran again")

    monkeypatch.setattr(study, "trunk_knn_map", must_not_run)
    assert tool.main(argv) == 0
    summary = json.loads((results / "study.json").read_text())["summary"]
    assert summary["random init"]["kNN mAP"]["mean"] == stored["metrics"]["kNN mAP"]


def test_paired_differences_subtract_random_init_of_the_same_seed_only():
    def rec(variant, seed, value, protocol="kNN mAP"):
        return {"variant": variant, "seed": seed, "protocol": protocol, "mAP": value}

    runs = [rec("random init", 0, 50.0), rec("random init", 1, 46.0),
            rec("SwAV", 0, 51.0), rec("SwAV", 1, 49.0),
            rec("SwAV", 2, 90.0),  # no random init of seed 2: not paired, left out
            rec("SwAV", 0, 40.0, "linear mAP")]  # no random-init linear run: left out
    paired = paired_differences(runs)
    assert set(paired) == {"SwAV"} and set(paired["SwAV"]) == {"kNN mAP"}
    d = paired["SwAV"]["kNN mAP"]
    assert d["by_seed"] == {0: 1.0, 1: 3.0} and d["n"] == 2
    assert d["mean"] == 2.0 and abs(d["std"] - 2 ** 0.5) < 1e-9
    table = paired_table(paired, ["kNN mAP", "linear mAP"])
    assert "| SwAV | +2.0 +- 1.4 (n=2: +1.0 / +3.0) | - |" in table


def test_an_edited_config_or_base_makes_its_cached_results_stale(tmp_path):
    (tmp_path / "base").mkdir()
    base, child = tmp_path / "base" / "Base.yaml", tmp_path / "child.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.1\n")
    child.write_text('_BASE_: "base/Base.yaml"\nSEED: 3\n')
    first = config_files_sha256(str(child))
    job = tmp_path / "job"
    spec = {"config": "child.yaml", "config_sha256": first, "pretrain": None}
    assert cached_result(str(job), spec, lambda: {"m": 1.0}) == {"m": 1.0}

    def must_not_run():
        raise AssertionError("a finished job ran again")

    assert cached_result(str(job), spec, must_not_run) == {"m": 1.0}
    base.write_text("SOLVER:\n  BASE_LR: 0.2\n")  # the base changes, the file names do not
    second = config_files_sha256(str(child))
    assert second != first
    with pytest.raises(StaleResultError):
        cached_result(str(job), {**spec, "config_sha256": second}, must_not_run)


def test_a_result_recorded_before_config_hashing_is_trusted_by_its_config_name(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    old = {"config": "a.yaml", "pretrain": {"config": "p.yaml", "iters": 800}}
    (job / RESULT_FILE).write_text(json.dumps({"spec": old, "metrics": {"m": 2.0}}))
    new = {"config": "a.yaml", "config_sha256": "ab",
           "pretrain": {"config": "p.yaml", "config_sha256": "cd", "iters": 800}}
    assert cached_result(str(job), new, lambda: {"m": 0.0}) == {"m": 2.0}
    # everything that was recorded is still compared
    with pytest.raises(StaleResultError):
        cached_result(str(job), {**new, "config": "b.yaml"}, lambda: {"m": 0.0})
    with pytest.raises(StaleResultError):
        cached_result(str(job), {**new, "pretrain": {**new["pretrain"], "iters": 80}},
                      lambda: {"m": 0.0})


def _must_not_run(args):
    raise AssertionError(f"train_net ran: {args}")


def test_one_runner_reads_an_old_finished_folder_back_then_guards_its_settings(tmp_path):
    """A fine-tune folder from before result.json (only train_net's eval_results.json) is read
    back without running anything and its settings recorded; other weights bytes or overrides at
    the same paths are then another run (StaleResultError), not a silent reuse."""
    from ssprl_d2.transfer import finetune_and_evaluate

    config = os.path.join(REPO, "configs", "quick_schedules",
                          "faster_rcnn_R_18_C4_cpu_synthetic.yaml")
    weights, out = tmp_path / "w.pkl", tmp_path / "run"
    weights.write_bytes(b"trunk")
    out.mkdir()
    results = {"bbox": {"AP": 12.5, "AP50": 30.0}}
    (out / "model_final.pth").write_bytes(b"x")
    (out / "eval_results.json").write_text(json.dumps(
        {"weights": str(out / "model_final.pth"), "results": results}))
    opts = ["SOLVER.MAX_ITER", "2"]
    assert finetune_and_evaluate(config, str(out), str(weights), opts, _must_not_run) == results
    stored = json.loads((out / RESULT_FILE).read_text())
    assert stored["metrics"] == results and stored["spec"]["opts"] == opts
    assert stored["spec"]["weights_sha256"] == (
        "3e341d2d9c67be01819b25b25d5e53ea3cdf3a38d28846cda85a195eb9b7203a")  # sha256sum of "trunk"
    # read back from result.json now, even without train_net's file
    (out / "eval_results.json").unlink()
    assert finetune_and_evaluate(config, str(out), str(weights), opts, _must_not_run) == results
    with pytest.raises(StaleResultError, match="another --out"):
        finetune_and_evaluate(config, str(out), str(weights), ["SOLVER.MAX_ITER", "3"],
                              _must_not_run)
    weights.write_bytes(b"another trunk")  # exported again from another pre-training
    with pytest.raises(StaleResultError):
        finetune_and_evaluate(config, str(out), str(weights), opts, _must_not_run)


def test_the_study_and_transfer_tables_come_from_one_writer():
    from ssprl_d2.tables import markdown_table, stat_cell

    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1"]])
    s = {"mean": 2.0, "std": 2 ** 0.5, "n": 2}
    assert stat_cell(s) == "2.0 +- 1.4 (n=2)"
    assert stat_cell(s, signed=True, detail="+1.0 / +3.0") == "+2.0 +- 1.4 (n=2: +1.0 / +3.0)"
    assert stat_cell({"mean": 2.0, "std": 0.0, "n": 1}, bare_single=True) == "2.0"


def test_fine_tune_jobs_run_the_one_runner_with_the_studys_options(tmp_path, monkeypatch):
    """Each fine-tuning job is one finetune_and_evaluate call (cached by the study itself) with
    the options the study always used; its metric is the runner's final evaluation."""
    calls = []

    def runner(config, output_dir, weights, opts, cache=True):
        calls.append((os.path.basename(config), os.path.relpath(output_dir, tmp_path), weights,
                      list(opts), cache))
        return {"multilabel": {"mAP": 41.5}, "bbox": {"AP": 7.25}, "segm": {"AP": 6.5}}

    monkeypatch.setattr(study, "finetune_and_evaluate", runner)
    settings = study.StudySettings(seeds=[3], variants=["random init"], eval_iters=60,
                                   det_iters=20, out=str(tmp_path))
    records = evaluate_run(
        "random init", 3, str(tmp_path), ["linear mAP", "semi-sup 10% mAP", "box AP", "mask AP"],
        lambda j: study.job_spec("random init", 3, j, settings),
        lambda j: study._evaluate(3, str(tmp_path), j, lambda: "", settings))
    assert [(r["protocol"], r["mAP"]) for r in records] == [
        ("linear mAP", 41.5), ("semi-sup 10% mAP", 41.5), ("box AP", 7.25), ("mask AP", 6.5)]
    keep = ["SOLVER.CHECKPOINT_PERIOD", "100000"]
    assert calls == [
        ("multilabel_linear_R_18_cpu_synthetic.yaml", "linear", "",
         ["SEED", "3", *keep, "SOLVER.MAX_ITER", "60"], False),
        ("multilabel_semisup_R_18_cpu_synthetic.yaml", "semi-sup", "",
         ["DATASETS.MULTILABEL.TRAIN_FRACTION", "0.1", "DATASETS.MULTILABEL.SUBSET_SEED", "0",
          "SEED", "3", *keep, "SOLVER.MAX_ITER", "60"], False),
        ("mask_rcnn_R_18_FPN_cpu_synthetic.yaml", "maskrcnn", "",
         ["SEED", "3", *keep, "SOLVER.MAX_ITER", "20"], False),
    ]
    # cached under the study's settings: a second pass runs nothing
    calls.clear()
    evaluate_run("random init", 3, str(tmp_path), ["linear mAP"],
                 lambda j: study.job_spec("random init", 3, j, settings),
                 lambda j: study._evaluate(3, str(tmp_path), j, lambda: "", settings))
    assert calls == []
