"""P3 in the notebooks, the grid and the report: method configs, the grids' P3 runs, notebook
parameters, the results tables against hand-computed values, the mAP-vs-p plot, and the
notebook executed through papermill."""

import json
import statistics

import matplotlib
import numpy as np
import pandas as pd
import papermill
import pytest

from annotlib import reproduce
from annotlib.data.synthetic import generate_synthetic
from annotlib.experiments import (
    P3_CLAIM,
    P3_METHODS,
    P3_PROPORTIONS,
    P3_QUICK_PROPORTIONS,
    Run,
    grid,
    p3_config,
    p3_fields,
    p3_sweep,
    run_partial_labels,
)
from annotlib.io import read_json, write_json
from annotlib.report import (
    collect_results,
    p3_run_table,
    p3_summary,
    plot_summary,
    summarize,
    write_report,
)
from annotlib.reproduce import NOTEBOOKS
from annotlib.viz import plot_metric_vs_proportion

matplotlib.use("Agg")


@pytest.mark.parametrize("method, loss, rounds", [("partial_bce", "partial_bce", 0), ("known_only", "bce_known", 0),
                                                  ("unknown_negative", "bce_unknown_negative", 0),
                                                  ("curriculum", "partial_bce", 1)])
def test_p3_config_sets_each_methods_loss_and_curriculum(method, loss, rounds):
    cfg = p3_config("synthetic", method, 0.3, epochs=2)
    assert (cfg.loss, cfg.loss_kwargs, cfg.curriculum_rounds) == (loss, {}, rounds)
    assert cfg.label_proportion == 0.3 and cfg.curriculum_threshold == 0.9 and cfg.epochs == 2
    assert (cfg.backbone, cfg.image_size) == ("resnet10t", 64)  # CPU-sized on the synthetic set
    real = p3_config("coco2014", method, 0.1)
    assert (real.dataset, real.backbone, real.image_size, real.loss, real.curriculum_rounds) == \
        ("coco2014", "resnet101", 448, loss, rounds)


def test_p3_config_refuses_what_the_method_sets_and_unknown_methods():
    with pytest.raises(ValueError, match="loss: set by the P3 method"):
        p3_config("synthetic", "known_only", 0.5, loss="bce")
    with pytest.raises(ValueError, match="unknown P3 method 'pseudo'"):
        p3_config("synthetic", "pseudo", 0.5)
    with pytest.raises(ValueError, match="proportion"):
        p3_config("synthetic", "partial_bce", 0.0)


def p3_runs(profile, **kw):
    return [run for run in grid(profile, **kw) if run.paper == "p3"]


def test_grids_contain_the_p3_runs():
    (quick,) = p3_runs("quick")
    assert quick.path == "p3/synthetic/seed0" and quick.config.image_size == 64 and quick.config.epochs == 3
    assert quick.parameters == {"proportions": list(P3_QUICK_PROPORTIONS), "methods": list(P3_METHODS)}
    assert len([run for run in grid("quick") if run.paper == "p0"]) == 4

    paper = p3_runs("paper")
    assert [run.path for run in paper] == ["p3/voc2007/seed1", "p3/coco2014/seed1"]
    assert paper[0].parameters["proportions"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert list(P3_PROPORTIONS) == paper[0].parameters["proportions"]
    assert paper[0].config.backbone == "resnet101" and paper[0].config.image_size == 448
    assert [run.path for run in p3_runs("paper", datasets=["nus-wide"], seeds=[1, 2])] == \
        ["p3/nus-wide/seed1", "p3/nus-wide/seed2"]

    (smoke,) = p3_runs("smoke")
    assert smoke.config.epochs == 1 and len(smoke.parameters["proportions"]) * len(smoke.parameters["methods"]) <= 4


def test_notebook_parameters_reproduce_every_p3_config(tmp_path):
    (run,) = p3_runs("quick")
    run = Run(run.paper, run.config.replace(crop_scale=(0.5, 1.0), curriculum_threshold=0.8), run.parameters)
    params = reproduce.notebook_parameters(run.config, tmp_path, ["tsne"], run.paper, run.parameters)
    params = json.loads(json.dumps(params))  # what papermill hands the notebook
    assert "loss" not in params and "label_proportion" not in params["extra"]
    assert params["proportions"] == list(P3_QUICK_PROPORTIONS) and params["methods"] == list(P3_METHODS)
    named = {k: params[k] for k in reproduce.NOTEBOOK_FIELDS if k in params}
    fields = {k: v for k, v in named.items() if k != "dataset"}
    rebuilt = [p3_config(named["dataset"], m, p, **fields, **params["extra"])
               for p in params["proportions"] for m in params["methods"]]
    expected = [cfg for _, _, cfg in p3_sweep(run.config.dataset, list(P3_QUICK_PROPORTIONS), list(P3_METHODS),
                                               **p3_fields(run.config))]
    assert rebuilt == expected and len(expected) == 4 * len(P3_QUICK_PROPORTIONS)
    assert expected[3].curriculum_threshold == 0.8 and expected[3].crop_scale == (0.5, 1.0)


def test_losses_select_p3_methods_and_papers_select_papers(tmp_path, monkeypatch):
    runs = reproduce.select(grid("quick"), ["asl", "known_only", "curriculum"])
    assert [(r.paper, r.config.loss) for r in runs] == [("p0", "asl"), ("p3", "partial_bce")]
    assert runs[1].parameters["methods"] == ["known_only", "curriculum"]
    assert all(r.paper == "p0" for r in reproduce.select(grid("quick"), ["bce"]))

    executed = []
    monkeypatch.setattr(reproduce, "execute", lambda source, target, parameters: executed.append(source))
    assert reproduce.main(["--profile", "smoke", "--papers", "p3", "--reports", str(tmp_path)]) == 0
    assert executed == ["04_partial_labels.ipynb", "99_report.ipynb"]


def test_a_p3_notebook_run_with_other_methods_has_not_finished(tmp_path):
    notebook = tmp_path / "04_partial_labels.ipynb"
    notebook.write_text(json.dumps({"metadata": {"papermill": {
        "end_time": "2025-01-01", "exception": None,
        "parameters": {"proportions": [0.1, 0.5], "methods": ["partial_bce"], "epochs": 3}}}}))
    assert reproduce.finished(notebook) and reproduce.finished(notebook, {"proportions": [0.1, 0.5]})
    assert not reproduce.finished(notebook, {"proportions": [0.1, 0.5], "methods": ["partial_bce", "curriculum"]})


def test_data_parallel_training_covers_every_pair_of_a_p3_sweep(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(reproduce, "train_data_parallel",
                        lambda cfg, run_dir, nproc: trained.append((run_dir.relative_to(tmp_path).as_posix(),
                                                                    cfg.loss, cfg.label_proportion)))
    monkeypatch.setattr(reproduce, "execute", lambda source, target, parameters: None)
    (run,) = p3_runs("smoke")
    assert reproduce.run_grid([run], tmp_path, ["tsne"], nproc=2) == []
    proportions, methods = run.parameters["proportions"], run.parameters["methods"]
    assert [t[0] for t in trained] == [f"runs/p3/synthetic/seed0/p{p:g}/{m}" for p in proportions for m in methods]
    assert trained[0][1:] == (P3_METHODS[methods[0]]["loss"], proportions[0])


def fake_sweep_run(root, dataset, seed, proportion, method, m_ap):
    run = root / "runs" / "p3" / dataset / f"seed{seed}" / f"p{proportion:g}" / method
    block = {"CP": 0.4, "CR": 0.5, "CF1": 0.45, "OP": 0.6, "OR": 0.5, "OF1": 0.55, "N+": 10}
    loss = P3_METHODS[method]["loss"]
    write_json(run / "config.json", {"dataset": dataset, "loss": loss, "seed": seed, "backbone": "resnet10t",
                                     "image_size": 64, "epochs": 3, "batch_size": 64, "lr": 2e-3,
                                     "weights_file": None, "threshold_split": "val",
                                     "label_proportion": proportion})
    write_json(run / "metrics.json", {"dataset": dataset, "loss": loss, "num_images": {"train": 2160},
                                      "test": {"mAP": m_ap, "at_0.5": block, "tuned": block}})
    (run.parents[1] / "04_partial_labels.ipynb").write_text("{}")


MAPS = {  # (method, proportion) -> mAP of seed 0 and seed 1
    ("partial_bce", 0.1): (0.40, 0.46), ("partial_bce", 0.5): (0.50, 0.52),
    ("known_only", 0.1): (0.30, 0.36), ("known_only", 0.5): (0.45, 0.47),
    ("unknown_negative", 0.5): (0.41,),  # seed 0 only, and not run at p = 0.1
}


def test_report_tabulates_p3_mean_and_std_per_method_and_proportion(tmp_path):
    for (method, p), values in MAPS.items():
        for seed, m_ap in enumerate(values):
            fake_sweep_run(tmp_path, "synthetic", seed, p, method, m_ap)
    p0 = tmp_path / "runs" / "p0" / "synthetic" / "bce-seed0"
    block = {"CP": 0.4, "CR": 0.5, "CF1": 0.3, "OP": 0.6, "OR": 0.5, "OF1": 0.55, "N+": 10}
    write_json(p0 / "config.json", {"dataset": "synthetic", "loss": "bce", "seed": 0, "backbone": "resnet10t",
                                    "image_size": 96, "epochs": 8, "batch_size": 64, "lr": 2e-3,
                                    "weights_file": None, "threshold_split": "val"})
    write_json(p0 / "metrics.json", {"dataset": "synthetic", "loss": "bce", "num_images": {"train": 2160},
                                     "test": {"mAP": 0.33, "at_0.5": block, "tuned": block}})

    results = collect_results(tmp_path)
    sweeps = results[results["method"].notna()]
    assert len(sweeps) == 2 * 9 and set(sweeps["notebook"]) == \
        {"runs/p3/synthetic/seed0/04_partial_labels.ipynb", "runs/p3/synthetic/seed1/04_partial_labels.ipynb"}
    assert len(summarize(results)) == 2  # P0's table holds its own run only, at 0.5 and tuned

    summary = p3_summary(results)
    cell = summary.set_index(["method", "proportion"])["mAP"]
    # mean 0.43, sample std sqrt(2 * 0.03**2 / 1) = 0.0424
    assert cell["partial_bce", 0.1] == "0.430 ± 0.042"
    assert cell["partial_bce", 0.5] == f"0.510 ± {statistics.stdev([0.50, 0.52]):.3f}" == "0.510 ± 0.014"
    assert cell["known_only", 0.1] == "0.330 ± 0.042" and cell["unknown_negative", 0.5] == "0.410"

    write_report(tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| synthetic | bce | 0.5 |" in md  # P0's section as before
    assert P3_CLAIM in md and md.index("## P0") < md.index("## P3") < md.index("### synthetic")
    assert "| method | p = 0.1 | p = 0.5 |" in md
    assert "| partial_bce | 0.430 ± 0.042 | 0.510 ± 0.014 |" in md
    assert "| known_only | 0.330 ± 0.042 | 0.460 ± 0.014 |" in md
    assert "| unknown_negative | – | 0.410 |" in md
    line = next(line for line in md.splitlines() if line.startswith("Protocol: "))
    assert "resnet10t 64px, 3 ep, 2160 train imgs" in line and "seeds 0, 1" in line
    assert "backbone (paper: resnet101); image size (paper: 448); random init" in line and "synthetic data" in line
    assert "[seed0](runs/p3/synthetic/seed0/04_partial_labels.ipynb)" in line
    page = (tmp_path / "index.html").read_text()
    assert "<td>partial_bce</td><td>0.430 ± 0.042</td>" in page and P3_CLAIM in page

    fig = plot_summary(results)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "p3, synthetic: test mAP"


def test_report_of_p3_sweeps_alone(tmp_path):
    fake_sweep_run(tmp_path, "voc2007", 1, 0.2, "curriculum", 0.7)
    summary = write_report(tmp_path)
    assert summary.empty
    md = (tmp_path / "results.md").read_text()
    assert "### voc2007" in md and "| curriculum | 0.700 |" in md and "## P0" not in md


def test_plot_metric_vs_proportion_draws_the_mean_over_seeds_per_method():
    results = pd.DataFrame({"proportion": [0.1, 0.1, 0.5, 0.5, 0.1, 0.5],
                            "method": ["partial_bce"] * 4 + ["known_only"] * 2,
                            "mAP": [0.40, 0.46, 0.50, 0.52, 0.30, 0.45]})
    ax = plot_metric_vs_proportion(results)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["partial_bce", "known_only"]
    partial, known = (container.lines[0] for container in ax.containers)  # each curve's data line
    assert np.allclose(partial.get_xdata(), [0.1, 0.5]) and np.allclose(partial.get_ydata(), [0.43, 0.51])
    assert np.allclose(known.get_ydata(), [0.30, 0.45])
    bars = ax.containers[0].lines[2][0].get_segments()  # partial_bce's error bars: mean ± sample std
    assert np.allclose([seg[:, 1] for seg in bars], [[0.43 - 0.042426, 0.43 + 0.042426],
                                                     [0.51 - 0.014142, 0.51 + 0.014142]], atol=1e-5)
    assert ax.get_xlabel() == "proportion of known training labels p" and ax.get_ylabel() == "mAP"
    with pytest.raises(ValueError, match="missing CF1"):
        plot_metric_vs_proportion(results, "CF1")


def test_p3_run_table_puts_methods_in_rows_and_metric_p_in_columns():
    results = pd.DataFrame({"proportion": [0.1, 0.1, 0.5, 0.5], "method": ["known_only", "partial_bce"] * 2,
                            "mAP": [0.3, 0.4, 0.45, 0.5], "CF1": [0.1, 0.2, 0.3, 0.4]})
    table = p3_run_table(results, metrics=("mAP", "CF1"))
    assert list(table.index) == ["partial_bce", "known_only"]  # P3_METHODS order
    assert list(table.columns) == [("mAP", 0.1), ("mAP", 0.5), ("CF1", 0.1), ("CF1", 0.5)]
    assert table.loc["partial_bce", ("CF1", 0.5)] == 0.4


@pytest.mark.slow
def test_notebook_runs_the_sweep_and_saves_its_figures(tmp_path):
    root = generate_synthetic(tmp_path / "synthetic", num_images=120, image_size=48, seed=1)
    out = tmp_path / "sweep"
    parameters = {"dataset": "synthetic", "data_root": str(root), "proportions": [0.3, 1.0],
                  "methods": ["partial_bce", "unknown_negative"], "image_size": 48, "epochs": 1, "batch_size": 32,
                  "seed": 1, "device": "cpu", "progress": False, "projections": ["tsne"], "cam_images": 2,
                  "output_dir": str(out)}
    papermill.execute_notebook(str(NOTEBOOKS / "04_partial_labels.ipynb"), str(tmp_path / "executed.ipynb"),
                               parameters=parameters, kernel_name="python3", progress_bar=False,
                               cwd=str(NOTEBOOKS))
    for p in ("0.3", "1"):
        for method in ("partial_bce", "unknown_negative"):
            metrics = read_json(out / f"p{p}" / method / "metrics.json")
            assert metrics["loss"] == P3_METHODS[method]["loss"] and metrics["epochs"] == 1
            assert 0 < metrics["test"]["mAP"] <= 1
            assert (metrics.get("partial_labels", {}).get("label_proportion", 1.0)) == float(p)
    for figure in ("map_vs_proportion", "learning_curves", "embeddings", "cams"):
        assert (out / f"{figure}.png").stat().st_size > 1000
    results = pd.read_csv(out / "results.csv")
    assert list(zip(results["proportion"], results["method"])) == \
        [(0.3, "partial_bce"), (0.3, "unknown_negative"), (1.0, "partial_bce"), (1.0, "unknown_negative")]

    # A second sweep over the same pairs reads them back without training.
    mtime = (out / "p0.3" / "partial_bce" / "best.pt").stat().st_mtime_ns
    again = run_partial_labels("synthetic", [0.3], ["partial_bce"], out, data_root=str(root), image_size=48,
                               epochs=1, batch_size=32, seed=1, device="cpu", progress=False)
    assert again["mAP"].iloc[0] == pytest.approx(results["mAP"].iloc[0])
    assert (out / "p0.3" / "partial_bce" / "best.pt").stat().st_mtime_ns == mtime
