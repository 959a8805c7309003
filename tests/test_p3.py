"""P3 in the notebooks, the grid and the report: method configs, the grid's P3 runs, notebook
parameters, the results tables against hand-computed values, the mAP-vs-p plot, and the
notebook executed through papermill."""

import json

import matplotlib
import numpy as np
import pandas as pd
import papermill
import pytest
from reporting import fake_metrics

from annotlib import reproduce
from annotlib.data.synthetic import generate_synthetic
from annotlib.io import read_json
from annotlib.papers import PAPERS, Run, grid
from annotlib.papers.p3 import (
    CLAIM,
    METHODS,
    PROPORTIONS,
    QUICK_PROPORTIONS,
    p3_config,
    p3_sweep,
    run_partial_labels,
    sweep_fields,
    sweep_table,
)
from annotlib.report import collect_results, plot_summary, write_report
from annotlib.reproduce import NOTEBOOKS
from annotlib.viz import plot_metric_vs_proportion

matplotlib.use("Agg")


@pytest.mark.parametrize("method, loss, rounds", [("partial_bce", "partial_bce", 0), ("known_only", "bce_known", 0),
                                                  ("unknown_negative", "bce_unknown_negative", 0),
                                                  ("curriculum", "partial_bce", 1)])
def test_p3_config_sets_each_methods_loss_and_curriculum(method, loss, rounds):
    cfg = p3_config("synthetic", method, 0.3, epochs=2)
    assert (cfg.loss, cfg.loss_kwargs, cfg.task_kwargs.get("curriculum_rounds", 0)) == (loss, {}, rounds)
    assert cfg.task_kwargs["label_proportion"] == 0.3 and cfg.epochs == 2 and cfg.paper == "p3"
    assert (cfg.backbone, cfg.image_size) == ("resnet10t", 64)  # CPU-sized on the synthetic set
    real = p3_config("coco2014", method, 0.1)
    assert (real.dataset, real.backbone, real.image_size, real.loss, real.task_kwargs.get("curriculum_rounds", 0)) \
        == ("coco2014", "resnet101", 448, loss, rounds)


def test_p3_config_refuses_what_the_method_sets_and_unknown_methods():
    with pytest.raises(ValueError, match="loss: set by the P3 method"):
        p3_config("synthetic", "known_only", 0.5, loss="bce")
    with pytest.raises(ValueError, match="label_proportion: set by the P3 method"):
        p3_config("synthetic", "known_only", 0.5, task_kwargs={"label_proportion": 0.2})
    with pytest.raises(ValueError, match="unknown P3 method 'pseudo'"):
        p3_config("synthetic", "pseudo", 0.5)
    with pytest.raises(ValueError, match="proportion"):
        p3_config("synthetic", "partial_bce", 0.0)


def p3_runs(profile, **kw):
    return [run for run in grid(profile, **kw) if run.paper == "p3"]


def test_grids_contain_the_p3_runs():
    (quick,) = p3_runs("quick")
    assert quick.path == "p3/synthetic/seed0" and quick.config.image_size == 64 and quick.config.epochs == 3
    assert quick.parameters == {"proportions": list(QUICK_PROPORTIONS), "methods": list(METHODS)}
    assert len([run for run in grid("quick") if run.paper == "p0"]) == 4

    paper = p3_runs("paper")
    assert [run.path for run in paper] == ["p3/voc2007/seed1", "p3/coco2014/seed1"]
    assert paper[0].parameters["proportions"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert list(PROPORTIONS) == paper[0].parameters["proportions"]
    assert paper[0].config.backbone == "resnet101" and paper[0].config.image_size == 448
    assert [run.path for run in p3_runs("paper", datasets=["nus-wide"], seeds=[1, 2])] == \
        ["p3/nus-wide/seed1", "p3/nus-wide/seed2"]

    (smoke,) = p3_runs("smoke")
    assert smoke.config.epochs == 1 and len(smoke.parameters["proportions"]) * len(smoke.parameters["methods"]) <= 4


def test_notebook_parameters_reproduce_every_p3_config(tmp_path):
    (run,) = p3_runs("quick")
    run = Run(run.paper, run.variant, run.config.replace(crop_scale=(0.5, 1.0),
                                                         task_kwargs={"curriculum_threshold": 0.8}), run.parameters)
    params = reproduce.notebook_parameters(run, tmp_path, ["tsne"])
    params = json.loads(json.dumps(params))  # what papermill hands the notebook
    assert "loss" not in params and "loss" not in params["extra"]
    assert params["proportions"] == list(QUICK_PROPORTIONS) and params["methods"] == list(METHODS)
    named = {k: v for k, v in params.items()
             if k not in ("dataset", "proportions", "methods", "extra", "output_dir", "projections")}
    rebuilt = [p3_config(params["dataset"], m, p, **named, **params["extra"])
               for p in params["proportions"] for m in params["methods"]]
    expected = [cfg for _, cfg in PAPERS["p3"].trainings(run)]
    assert rebuilt == expected and len(expected) == 4 * len(QUICK_PROPORTIONS)
    assert expected[3].task_kwargs["curriculum_threshold"] == 0.8 and expected[3].crop_scale == (0.5, 1.0)
    assert expected == [cfg for _, _, cfg in p3_sweep("synthetic", QUICK_PROPORTIONS, METHODS,
                                                       **sweep_fields(run.config))]


def test_losses_select_p3_methods_and_papers_select_papers(tmp_path, monkeypatch):
    runs = reproduce.select(grid("quick"), ["asl", "known_only", "curriculum"])
    assert [(r.paper, r.config.loss) for r in runs] == [("p0", "asl"), ("p3", "partial_bce")]
    assert runs[1].parameters["methods"] == ["known_only", "curriculum"]
    bce = reproduce.select(grid("quick"), ["bce"])
    assert [r.paper for r in bce] == ["p0", "p1"] and bce[1].parameters["methods"] == ["bce"]

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
                                                                    cfg.loss, cfg.task_kwargs["label_proportion"])))
    monkeypatch.setattr(reproduce, "execute", lambda source, target, parameters: None)
    (run,) = p3_runs("smoke")
    assert reproduce.run_grid([run], tmp_path, ["tsne"], nproc=2) == []
    proportions, methods = run.parameters["proportions"], run.parameters["methods"]
    assert [t[0] for t in trained] == [f"runs/p3/synthetic/seed0/p{p:g}/{m}" for p in proportions for m in methods]
    assert trained[0][1:] == (METHODS[methods[0]]["loss"], proportions[0])


def fake_sweep_run(root, dataset, seed, proportion, method, m_ap):
    cfg = p3_config(dataset, method, proportion, seed=seed)
    fake_metrics(root / "runs" / "p3" / dataset / f"seed{seed}", f"p{proportion:g}/{method}", cfg,
                 {"mAP": m_ap, "CF1@0.5": 0.45, "CF1@tuned": 0.5})
    (root / "runs" / "p3" / dataset / f"seed{seed}" / "04_partial_labels.ipynb").write_text("{}")


MAPS = {  # (method, proportion) -> mAP of seed 0 and seed 1
    ("partial_bce", 0.1): (0.40, 0.46), ("partial_bce", 0.5): (0.50, 0.52),
    ("known_only", 0.1): (0.30, 0.36), ("known_only", 0.5): (0.45, 0.47),
    ("unknown_negative", 0.5): (0.41,),  # seed 0 only, and not run at p = 0.1
}


def test_report_tabulates_p3_mean_and_std_per_method_and_proportion(tmp_path):
    for (method, p), values in MAPS.items():
        for seed, m_ap in enumerate(values):
            fake_sweep_run(tmp_path, "synthetic", seed, p, method, m_ap)
    results = collect_results(tmp_path)
    assert len(results) == 9 and set(results["notebook"]) == \
        {"runs/p3/synthetic/seed0/04_partial_labels.ipynb", "runs/p3/synthetic/seed1/04_partial_labels.ipynb"}
    (section,) = write_report(tmp_path)
    cell = section["table"].set_index(["method", "p"])["mAP"]
    # mean 0.43, sample std sqrt(2 * 0.03**2 / 1) = 0.0424
    assert cell["partial_bce", 0.1] == "0.430 ± 0.042"
    assert cell["partial_bce", 0.5] == "0.510 ± 0.014"
    assert cell["known_only", 0.1] == "0.330 ± 0.042" and cell["unknown_negative", 0.5] == "0.410"
    seeds = section["table"].set_index(["method", "p"])["seeds"]
    assert seeds["partial_bce", 0.1] == 2 and seeds["unknown_negative", 0.5] == 1
    md = (tmp_path / "results.md").read_text()
    assert CLAIM in md and md.index("## P3") < md.index("### synthetic")
    assert "| method | p | mAP | CF1@0.5 | CF1@tuned | seeds (n) |" in md
    assert "| partial_bce | 0.1 | 0.430 ± 0.042 | 0.450 ± 0.000 | 0.500 ± 0.000 | 2 |" in md
    line = next(line for line in md.splitlines() if line.startswith("Differs from the paper in: "))
    assert "backbone resnet10t (paper: resnet101); image size 64 (paper: 448); random init" in line
    assert "synthetic data" in line
    assert "[seed0](runs/p3/synthetic/seed0/04_partial_labels.ipynb)" in md
    page = (tmp_path / "index.html").read_text()
    assert "<td class='key'>partial_bce</td><td class='key'>0.1</td><td>0.430 ± 0.042</td>" in page and CLAIM in page
    fig = plot_summary(results)
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "test mAP"


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


def test_sweep_table_puts_methods_in_rows_and_metric_p_in_columns():
    results = pd.DataFrame({"proportion": [0.1, 0.1, 0.5, 0.5], "method": ["known_only", "partial_bce"] * 2,
                            "mAP": [0.3, 0.4, 0.45, 0.5], "CF1": [0.1, 0.2, 0.3, 0.4]})
    table = sweep_table(results, metrics=("mAP", "CF1"))
    assert list(table.index) == ["partial_bce", "known_only"]  # METHODS order
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
            assert metrics["loss"] == METHODS[method]["loss"] and metrics["config"]["epochs"] == 1
            assert 0 < metrics["test"]["mAP"] <= 1 and metrics["paper"] == "p3"
            assert metrics["config"]["task_kwargs"]["label_proportion"] == float(p)
            assert metrics["variant"] == f"p{p}/{method}"
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
