"""run_all.sh's grid runner and the report: the smoke profile end to end through the notebooks,
skipping finished runs, refusing stale ones, failures listed, and the results tables against
hand-computed values."""

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from reporting import fake_metrics

from annotlib import reproduce
from annotlib.io import read_json
from annotlib.models.backbone import WeightsError, create_backbone, weights_path
from annotlib.papers import PAPERS, REAL_WEIGHTS, grid
from annotlib.papers.p0 import LOSS_ABLATION, p0_config, protocol_of
from annotlib.report import collect_results, write_report
from annotlib.stats import TEST_OUTPUTS


@pytest.mark.slow
def test_smoke_profile_executes_the_notebooks_and_writes_the_report(tmp_path, capsys):
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path), "--no-progress",
                           "--device", "cpu"]) == 0
    profile = tmp_path / "smoke"
    for loss in ("bce", "unsymmetric"):
        run = profile / "runs" / "p0" / "synthetic" / f"{loss}-seed0"
        assert reproduce.finished(run / "01_unsymmetric_loss.ipynb")
        metrics = read_json(run / "metrics.json")
        assert metrics["loss"] == loss and metrics["config"]["epochs"] == 1 and metrics["paper"] == "p0"
        assert metrics["variant"] == f"{loss}-seed0"
        assert 0 < metrics["test"]["mAP"] <= 1 and 0 <= metrics["test"]["CF1@tuned"] <= 1
        for figure in ("learning_curves", "f1_vs_frequency", "embeddings", "cams"):
            assert (run / f"{figure}.png").stat().st_size > 1000
    results = (profile / "results.md").read_text()
    p0_section = results[results.index("## P0"):results.index("## P1")]
    assert len([line for line in p0_section.splitlines() if line.startswith(("| bce |", "| unsymmetric |"))]) == 2
    assert "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb" in (profile / "index.html").read_text()
    assert reproduce.finished(profile / "99_report.ipynb")
    p1 = profile / "runs" / "p1" / "synthetic" / "seed0"
    assert reproduce.finished(p1 / "02_cnn_rnn.ipynb") and (p1 / "decoded.png").exists()
    assert read_json(p1 / "cnn_rnn" / "metrics.json")["task"] == "label_sequence" and "| cnn_rnn | " in results
    sweep = profile / "runs" / "p3" / "synthetic" / "seed0"
    assert reproduce.finished(sweep / "04_partial_labels.ipynb") and (sweep / "map_vs_proportion.png").exists()
    assert "| partial_bce | 0.1 | " in results and len(list(sweep.glob("p*/*/metrics.json"))) == 4
    p2 = profile / "runs" / "p2" / "synthetic" / "seed0"
    assert reproduce.finished(p2 / "03_affective.ipynb") and (p2 / "retrieval.png").exists()
    assert read_json(p2 / "sentiment" / "metrics.json")["task"] == "metric_learning" and "| softmax | " in results
    p4 = profile / "runs" / "p4" / "synthetic" / "seed0"
    assert reproduce.finished(p4 / "05_cam_captioning.ipynb") and (p4 / "captions.png").exists()
    assert "CIDEr-D" in read_json(p4 / "joint_dis" / "metrics.json")["test"] and "| classifier | " in results
    # The claims open the report; the trainings kept their test outputs, so each paper whose
    # smoke grid runs both sides of a claim and keeps per-image outputs has an interval and a verdict.
    assert (profile / "runs/p0/synthetic/bce-seed0" / TEST_OUTPUTS).exists()
    claims = results[results.index("## Claims"):results.index("## Results")].split("### Claims of ")[1:]
    verdicts = ("| reproduced |", "| not reproduced |", "| inconclusive |")
    for key, block in zip(("P0", "P1", "P2", "P3"), claims):
        assert block.startswith(key)
        assert any(line.endswith(verdicts) and "(1 seed)" in line for line in block.splitlines()), key

    # A compact export for a repository: text only, the report linking the notebooks, its
    # claims (computed before the per-image outputs are left out) as in the full report.
    shared = tmp_path / "reference" / "smoke"
    reproduce.export(profile, shared, compact=True)
    assert sorted(p.name for p in shared.rglob("*.html")) == ["index.html"]
    assert (shared / "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb").is_file()
    assert not [p for p in shared.rglob("*") if p.suffix in (".png", ".jpg", ".npz", ".pt")]
    page = (shared / "index.html").read_text()
    assert "(HTML)" not in (shared / "results.md").read_text() and "_loss.html" not in page and "<img" not in page
    shared_results = (shared / "results.md").read_text()
    assert shared_results[:shared_results.index("## Results")] == results[:results.index("## Results")]
    assert max(p.stat().st_size for p in shared.rglob("*") if p.is_file()) < 2**20

    mtime = (profile / "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path), "--no-progress",
                           "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 6  # P0's two runs, P1's to P4's
    assert (profile / "runs/p0/synthetic/bce-seed0/01_unsymmetric_loss.ipynb").stat().st_mtime_ns == mtime

    # Another config into the same folders is refused by name, never reported as the old numbers.
    capsys.readouterr()
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path), "--no-progress",
                           "--device", "cpu", "--set", "epochs=2"]) == 1
    out, err = capsys.readouterr()
    assert "finished before" not in out and out.count(": refused: ") == 6
    assert err.count("holds another config (epochs: 2 vs 1") == 2 + 2 + 2 + 4 + 2  # every training folder named


def test_a_failed_run_does_not_stop_the_others_and_is_listed(tmp_path, monkeypatch, capsys):
    executed = []

    def fake_execute(source, target, parameters):
        executed.append(target)
        if parameters.get("loss") == "bce":
            raise RuntimeError("CUDA out of memory\nat the end")

    monkeypatch.setattr(reproduce, "execute", fake_execute)
    assert reproduce.main(["--profile", "smoke", "--reports", str(tmp_path)]) == 1
    assert [p.parent.name for p in executed[:2]] == ["bce-seed0", "unsymmetric-seed0"]
    assert [p.name for p in executed[2:]] == ["02_cnn_rnn.ipynb", "03_affective.ipynb", "04_partial_labels.ipynb",
                                              "05_cam_captioning.ipynb", "99_report.ipynb"]
    err = capsys.readouterr().err
    assert "1 notebook(s) failed" in err and "bce-seed0/01_unsymmetric_loss.ipynb: RuntimeError: at the end" in err


def test_notebook_parameters_reproduce_the_config(tmp_path):
    run = grid("quick", papers=["p0"])[0]
    run = type(run)(run.paper, run.variant, run.config.replace(crop_scale=(0.5, 1.0),
                                                                task_kwargs={"threshold_split": "train"}))
    params = json.loads(json.dumps(reproduce.notebook_parameters(run, tmp_path, ["tsne"])))
    named = {k: v for k, v in params.items() if k not in ("extra", "output_dir", "projections", "variant")}
    assert p0_config(**named, **params["extra"]) == run.config and params["variant"] == run.variant


def test_set_overrides_parse_json_values():
    assert reproduce.parse_overrides(["epochs=5", "weights_file=w.pt", "crop_scale=[0.5, 1]", "bf16=false",
                                      'task_kwargs={"threshold_split": "train"}']) == \
        {"epochs": 5, "weights_file": "w.pt", "crop_scale": (0.5, 1), "bf16": False,
         "task_kwargs": {"threshold_split": "train"}}
    with pytest.raises(ValueError, match="no_such_field"):
        reproduce.parse_overrides(["no_such_field=1"])


def fake_run(root, loss, seed, cf1, dataset="corel-5k", bf16=False):
    cfg = p0_config(dataset, loss, seed=seed, backbone="mobilenetv2_100", image_size=128, epochs=6, lr=3e-4,
                    weights_file="w.safetensors")
    test = {"CP@0.5": 0.4, "CF1@0.5": cf1, "N+@0.5": 100 + seed, "CF1@tuned": cf1 + 0.01, "N+@tuned": 120,
            "mAP": 0.3 + seed / 100}
    run = fake_metrics(root / "runs" / "p0" / dataset, f"{loss}-seed{seed}", cfg, test, bf16=bf16, labels=260)
    (run / "01_unsymmetric_loss.ipynb").write_text("{}")


def test_report_gives_mean_and_sample_std_over_seeds_beside_the_paper(tmp_path):
    for seed, cf1 in enumerate([0.40, 0.44, 0.48]):
        fake_run(tmp_path, "asl", seed, cf1)
    fake_run(tmp_path, "bce", 0, 0.3, bf16=True)
    sections = write_report(tmp_path)
    assert [s["dataset"] for s in sections] == ["corel-5k", "corel-5k"]  # bf16 differs: its own table
    asl = sections[0]["table"].set_index("loss").loc["asl"]
    std = math.sqrt(sum((v - 0.44) ** 2 for v in (0.40, 0.44, 0.48)) / 2)
    assert asl["CF1@0.5"] == f"0.440 ± {std:.3f}" and asl["seeds"] == 3
    assert asl["N+@0.5"] == "101 ± 1" and asl["mAP"] == "0.310 ± 0.010"
    assert asl["paper CF1@0.5"] == f"{LOSS_ABLATION['asl']['CF1@0.5']:.3f}" and asl["OF1@0.5"] == "–"
    assert "backbone mobilenetv2_100 (paper: tresnet_m); image size 128 (paper: 448); epochs 6 (paper: 40)" \
        in sections[0]["differences"]
    assert "pretrained weights from a local file" in sections[0]["differences"]
    assert "bf16" not in sections[0]["differences"] and "bf16 autocast (paper: fp32)" in sections[1]["differences"]
    bce = sections[1]["table"].set_index("loss").loc["bce"]
    assert bce["CF1@0.5"] == "0.300" and bce["paper N+@tuned"] == "164"
    md = (tmp_path / "results.md").read_text()
    assert "N+ counts out of 260 labels." in md and "per-label MCC thresholds tuned on val" in md
    # One cell per metric, ours then the paper's; a column no run measured is named, not shown.
    assert "| loss | selected on | CP@0.5 | CF1@0.5 | N+@0.5 (of 260) | CF1@tuned |" in md
    assert "| asl | val | 0.400 ± 0.000 | 0.440 ± 0.040 (paper 0.500) | 101 ± 1 (paper 179) |" in md
    assert "(paper 184) | 0.310 ± 0.010 | 3 |\n\nNot measured in these runs: CR@0.5, CP@tuned" in md
    assert "(runs/p0/corel-5k/asl-seed2/01_unsymmetric_loss.ipynb)" in md
    assert "<td>0.440 ± " in (tmp_path / "index.html").read_text()
    claim = PAPERS["p0"].claims[0].text
    assert claim in md and html.escape(claim) in (tmp_path / "index.html").read_text()


def test_report_of_an_empty_profile_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs"):
        write_report(tmp_path)


def test_a_metrics_file_without_schema_is_named(tmp_path):
    path = tmp_path / "runs" / "p0" / "corel-5k" / "old" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"test": {"mAP": 0.3}}')
    with pytest.raises(ValueError, match=r"old/metrics\.json: written before metrics\.json had a schema"):
        collect_results(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "corel-5k"], "--datasets applies to the real and paper profiles only"),
    (["--profile", "smoke", "--data-root", "."], "--data-root applies to the real and paper profiles only"),
    (["--weights-root", "."], "--weights-root applies to the real and paper profiles only"),
    (["--compact"], "--compact applies to --export only"),
    (["--profile", "paper", "--data-root", "/nonexistent-annotlib-root"], "not a directory"),
    (["--losses", "nosuch", "bce"], "--losses nosuch: selects no run of this grid"),
    (["--papers", "p2", "--losses", "bce"],
     "--losses bce: selects no run of this grid (its losses and methods: p2: sentiment, softmax, triplet)"),
    (["--set", "epochs=2", "nosuchfield=1"], "--set 'nosuchfield=1': expected FIELD=VALUE"),
    (["--gpus", "0,x"], "--gpus 0,x: expected GPU indices or cpu, comma-separated"),
    (["--gpus", "cpu", "--device", "cpu"], "--device cpu with --gpus: each worker uses its own device"),
    (["--gpus", "cpu,cpu", "--nproc-per-node", "2"], "--nproc-per-node applies without --gpus and --launcher"),
    (["--gpus", "cpu", "--launcher", "slurm"], "--gpus and --launcher: choose one"),
    (["--slurm-partition", "gpu"], "--slurm-partition applies to --launcher only"),
    (["--launcher", "submitit-local", "--slurm-time", "60"], "--slurm-time applies to --launcher slurm only"),
    (["--launcher", "slurm", "--gpus-per-job", "0"], "--gpus-per-job 0: must be at least 1"),
    (["--gpus-per-job", "2"], "--gpus-per-job applies to --launcher only"),
])
def test_options_that_select_nothing_or_do_not_apply_are_refused_before_anything_runs(
        argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "execute", lambda *a: pytest.fail("a notebook ran"))
    with pytest.raises(SystemExit) as exit_:
        reproduce.main([*argv, "--reports", str(tmp_path / "reports")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_paper_profile_lists_every_missing_dataset_and_weights_file_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "execute", lambda *a: pytest.fail("a notebook ran"))
    (tmp_path / "data" / "Corel-5k").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["--profile", "paper", "--papers", "p0", "p2", "--data-root", "data", "--reports", "out",
                           "--set", "weights_file=w.safetensors"]) == 2
    err = capsys.readouterr().err
    expected = [f"weights_file {tmp_path / 'w.safetensors'}: no such file",  # read from the caller's folder
                f"corel-5k train: {tmp_path / 'data/Corel-5k/train.json'}: annotation file not found",
                "corel-5k val: ", "corel-5k test: ", "iapr-tc-12: no folder", "esp-game: no folder", "fi: no folder",
                "iapsa: no folder", "artphoto: no folder", "abstract: no folder"]
    assert f"{len(expected)} thing(s) the paper profile needs are missing; nothing was run" in err
    assert all(line in err for line in expected) and not (tmp_path / "out").exists()


def test_preflight_passes_a_dataset_in_its_real_layout_and_names_missing_images(tmp_path):
    from annotlib.papers import Run
    from annotlib.papers.p0 import p0_config
    root = tmp_path / "Corel-5k"
    (root / "images").mkdir(parents=True)
    for split, names in (("train", ["a.jpeg", "b.jpeg"]), ("test", ["c.jpeg"])):
        (root / f"{split}.json").write_text(json.dumps({"samples": [
            {"image_name": n, "image_labels": ["sky"]} for n in names], "labels": ["sky", "sea"]}))
    for name in ("a.jpeg", "c.jpeg"):
        (root / "images" / name).write_bytes(b"")
    run = Run("p0", "bce-seed1", p0_config("corel-5k", "bce", data_root=str(root), val_fraction=0.5))
    assert [line.split(": ", 1)[1] for line in reproduce.preflight([run])] == \
        [f"1 of 1 image files missing, e.g. {root / 'images/b.jpeg'}"]
    (root / "images" / "b.jpeg").write_bytes(b"")
    assert reproduce.preflight([run]) == []


def test_export_copies_the_report_without_checkpoints_unless_asked(tmp_path):
    profile = tmp_path / "quick"
    run = profile / "runs" / "p0" / "synthetic" / "bce-seed0"
    run.mkdir(parents=True)
    for name, data in (("metrics.json", b"{}"), ("cams.png", b"x" * 300), ("best.pt", b"w" * 1000),
                       (".metrics.json.tmp12", b"t")):
        (run / name).write_bytes(data)
    (profile / "index.html").write_text("<html></html>")
    size = reproduce.export(profile, tmp_path / "shared")
    copied = sorted(str(p.relative_to(tmp_path / "shared")) for p in (tmp_path / "shared").rglob("*") if p.is_file())
    assert copied == ["index.html", "runs/p0/synthetic/bce-seed0/cams.png", "runs/p0/synthetic/bce-seed0/metrics.json"]
    assert size == 13 + 2 + 300
    assert reproduce.export(profile, tmp_path / "with", with_checkpoints=True) == size + 1000
    with pytest.raises(FileExistsError, match="not empty"):
        reproduce.export(profile, tmp_path / "shared")


def test_slurm_is_refused_where_jobs_cannot_be_submitted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit):
        reproduce.main(["--launcher", "slurm", "--reports", str(tmp_path / "reports")])
    assert "--launcher slurm: no sbatch on this machine" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("argv, message", [
    (["--with-checkpoints"], "--with-checkpoints applies to --export only"),
    (["--export", "."], "--export .: not empty"),
])
def test_export_options_are_checked_before_anything_runs(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "execute", lambda *a: pytest.fail("a notebook ran"))
    with pytest.raises(SystemExit):
        reproduce.main([*argv, "--reports", str(tmp_path / "reports")])
    assert message in capsys.readouterr().err


def test_real_profile_runs_each_paper_on_real_data_with_the_local_weights_and_two_seeds():
    runs = grid("real")
    assert {run.paper for run in runs} == set(PAPERS)
    for run in runs:
        assert run.config.dataset != "synthetic" and run.config.weights_file == REAL_WEIGHTS
        assert run.config.backbone_lr == 0 and run.config.image_size == 128
    for paper in PAPERS:
        assert len({run.config.seed for run in runs if run.paper == paper}) >= 2
    # P0's both protocols, every loss
    p0 = [run for run in runs if run.paper == "p0"]
    assert {protocol_of(run.config.to_dict()) for run in p0} == {"ours", "published"} and len(p0) == 16


def test_real_profile_finds_everything_under_the_shared_layout(data_root, mobilenet_weights, monkeypatch):
    monkeypatch.setenv("ANNOTLIB_DATA_ROOT", str(data_root))
    monkeypatch.setenv("ANNOTLIB_WEIGHTS_ROOT", str(mobilenet_weights.parent))
    assert reproduce.preflight(grid("real")) == []


def test_weights_files_named_relatively_are_read_under_the_weights_root(tmp_path, monkeypatch):
    monkeypatch.delenv("ANNOTLIB_WEIGHTS_ROOT", raising=False)
    assert weights_path("w.safetensors") == Path("w.safetensors")
    monkeypatch.setenv("ANNOTLIB_WEIGHTS_ROOT", str(tmp_path))
    assert weights_path("w.safetensors") == tmp_path / "w.safetensors"
    assert weights_path("/elsewhere/w.safetensors") == Path("/elsewhere/w.safetensors")
    with pytest.raises(WeightsError, match=f"{tmp_path / 'w.safetensors'}: weights file not found"):
        create_backbone("resnet10t", weights_file="w.safetensors")


def test_real_profile_defaults_the_weights_root_beside_the_data_root_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "execute", lambda *a: pytest.fail("a notebook ran"))
    monkeypatch.delenv("ANNOTLIB_WEIGHTS_ROOT", raising=False)
    (tmp_path / "data").mkdir()
    assert reproduce.main(["--profile", "real", "--papers", "p2", "--data-root", str(tmp_path / "data"),
                           "--reports", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert f"ANNOTLIB_WEIGHTS_ROOT={tmp_path / 'weights'} (no such folder)" in out
    assert f"weights_file {tmp_path / 'weights' / REAL_WEIGHTS}: no such file" in err and "fi: no folder" in err


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_compact_notebook_turns_only_large_figures_into_jpeg_that_look_the_same(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:400, 0:600]
    photo = (np.stack([x * 0.4, y * 0.6, (x + y) * 0.2], -1) + rng.normal(0, 4, (400, 600, 3))).clip(0, 255)
    rgba = np.concatenate([photo, np.full((400, 600, 1), 255.0)], -1).astype(np.uint8)
    rgba[:50, :50, 3] = 0  # a transparent corner becomes white, not black
    large, small = _png(Image.fromarray(rgba, "RGBA")), _png(Image.new("RGB", (20, 20), "red"))
    cells = [{"cell_type": "code", "source": "", "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "display_data", "data": {"image/png": png, "text/plain": "<Figure>"},
         "metadata": {"image/png": {"width": 600}}}]} for png in (large, small)]
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    before = path.stat().st_size
    reproduce.compact_notebook(path)
    first, second = (cell["outputs"][0] for cell in json.loads(path.read_text())["cells"])
    assert second["data"]["image/png"] == small and "image/jpeg" not in second["data"]
    assert set(first["data"]) == {"image/jpeg", "text/plain"} and first["metadata"] == {"image/jpeg": {"width": 600}}
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["data"]["image/jpeg"]))), dtype=float)
    expected = rgba[..., :3].astype(float)
    expected[:50, :50] = 255
    assert decoded.shape == expected.shape and np.abs(decoded - expected).mean() < 4
    assert decoded[:40, :40].min() > 240
    assert path.stat().st_size < before / 2

