"""run_all.sh's grid runner and the report: the smoke profile end to end through the notebooks,
skipping finished runs, failures listed, and the results tables against hand-computed values."""

import json
import math

import pytest

from annotlib import reproduce
from annotlib.experiments import P0_LOSS_ABLATION
from annotlib.io import read_json, write_json
from annotlib.report import collect_results, summarize, write_report


@pytest.mark.slow
def test_smoke_profile_executes_the_notebooks_and_writes_the_report(tmp_path, capsys):
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path), "--no-progress",
                           "--device", "cpu"]) == 0
    profile = tmp_path / "smoke"
    for loss in ("bce", "unsymmetric"):
        run = profile / "runs" / "p0" / "synthetic" / f"{loss}-seed0"
        assert reproduce.finished(run / "01_unsymmetric_loss.ipynb")
        metrics = read_json(run / "metrics.json")
        assert metrics["loss"] == loss and metrics["epochs"] == 1
        assert 0 < metrics["test"]["mAP"] <= 1 and 0 <= metrics["test"]["tuned"]["CF1"] <= 1
        for figure in ("learning_curves", "f1_vs_frequency", "embeddings", "cams"):
            assert (run / f"{figure}.png").stat().st_size > 1000
    results = (profile / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| synthetic")]
    assert len(rows) == 4  # two losses, each at 0.5 and tuned
    assert "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb" in (profile / "index.html").read_text()
    assert reproduce.finished(profile / "99_report.ipynb")
    sweep = profile / "runs" / "p3" / "synthetic" / "seed0"
    assert reproduce.finished(sweep / "04_partial_labels.ipynb") and (sweep / "map_vs_proportion.png").exists()
    assert "| partial_bce | " in results and len(list(sweep.glob("p*/*/metrics.json"))) == 4

    mtime = (profile / "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path), "--no-progress",
                           "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 3  # P0's two runs and P3's sweep
    assert (profile / "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb").stat().st_mtime_ns == mtime


def test_a_failed_run_does_not_stop_the_others_and_is_listed(tmp_path, monkeypatch, capsys):
    executed = []

    def fake_execute(source, target, parameters):
        executed.append(target)
        if parameters.get("loss") == "bce":
            raise RuntimeError("CUDA out of memory\nat the end")

    monkeypatch.setattr(reproduce, "execute", fake_execute)
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path)]) == 1
    assert [p.parent.name for p in executed[:2]] == ["bce-seed0", "unsymmetric-seed0"]
    assert [p.name for p in executed[2:]] == ["04_partial_labels.ipynb", "99_report.ipynb"]
    err = capsys.readouterr().err
    assert "1 notebook(s) failed" in err and "bce-seed0/01_unsymmetric_loss.ipynb: RuntimeError: at the end" in err


def test_notebook_parameters_reproduce_the_config(tmp_path):
    from annotlib.experiments import grid, p0_config
    cfg = grid("quick")[0].config.replace(crop_scale=(0.5, 1.0))
    params = reproduce.notebook_parameters(cfg, tmp_path, ["tsne"])
    params = json.loads(json.dumps(params))  # what papermill hands the notebook
    named = {k: params[k] for k in reproduce.NOTEBOOK_FIELDS}
    assert p0_config(**named, **params["extra"]) == cfg


def test_set_overrides_parse_json_values():
    assert reproduce.parse_overrides(["epochs=5", "weights_file=w.pt", "crop_scale=[0.5, 1]", "bf16=false"]) == \
        {"epochs": 5, "weights_file": "w.pt", "crop_scale": (0.5, 1), "bf16": False}
    with pytest.raises(ValueError, match="no_such_field"):
        reproduce.parse_overrides(["no_such_field=1"])


def fake_run(root, loss, seed, cf1, dataset="corel-5k", runtime=None):
    run = root / "runs" / "p0" / dataset / f"{loss}-seed{seed}"
    block = {"CP": 0.4, "CR": 0.5, "CF1": cf1, "OP": 0.6, "OR": 0.5, "OF1": 0.55, "N+": 100 + seed}
    write_json(run / "config.json", {"dataset": dataset, "loss": loss, "seed": seed, "backbone": "mobilenetv2_100",
                                     "image_size": 128, "epochs": 6, "batch_size": 32, "lr": 3e-4,
                                     "weights_file": "w.safetensors", "threshold_split": "val"})
    write_json(run / "metrics.json", {"dataset": dataset, "loss": loss, "num_images": {"train": 4050},
                                      "test": {"mAP": 0.3 + seed / 100, "at_0.5": block, "tuned": block},
                                      **({"runtime": runtime} if runtime else {})})
    (run / "01_unsymmetric_loss.ipynb").write_text("{}")


def test_report_gives_mean_and_sample_std_over_seeds_beside_the_paper(tmp_path):
    for seed, cf1 in enumerate([0.40, 0.44, 0.48]):
        fake_run(tmp_path, "asl", seed, cf1)
    fake_run(tmp_path, "bce", 0, 0.3, runtime={"device": "cpu", "bf16_autocast": True})
    summary = summarize(collect_results(tmp_path))
    asl = summary[(summary.loss == "asl") & (summary.thresholds == "0.5")].iloc[0]
    std = math.sqrt(sum((v - 0.44) ** 2 for v in (0.40, 0.44, 0.48)) / 2)
    assert asl["CF1"] == f"0.440 ± {std:.3f}" and asl["seeds"] == "0, 1, 2"
    assert asl["N+"] == "101 ± 1" and asl["mAP"] == "0.310 ± 0.010"
    assert asl["paper CF1"] == f"{P0_LOSS_ABLATION['asl']['at_0.5']['CF1']:.3f}"
    assert "mobilenetv2_100 128px, 6 ep, 4050 train imgs" in asl["protocol"]
    assert "backbone; image size; epochs; lr; pretrained weights" in asl["differs from the paper in"]
    bce = summary[(summary.loss == "bce") & (summary.thresholds == "tuned")].iloc[0]
    assert bce["CF1"] == "0.300" and bce["paper N+"] == "164"
    assert "bf16 autocast (paper: fp32)" in bce["differs from the paper in"]
    assert "bf16" not in asl["differs from the paper in"]  # not recorded: not claimed

    write_report(tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| corel-5k | asl | 0.5 |" in md and "(runs/p0/corel-5k/asl-seed2/01_unsymmetric_loss.ipynb)" in md
    assert "<td>0.440 ± " in (tmp_path / "index.html").read_text()


def test_report_of_an_empty_profile_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs"):
        write_report(tmp_path)
