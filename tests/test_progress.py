"""Progress where the user is: one plain line per epoch from ``fit``, which the grid runner
streams from the notebook's kernel to its terminal, and nothing with progress off."""

import csv
import os
import re

import pytest
from test_notebooks import noise

from annotlib.data.synthetic import generate_synthetic
from annotlib.reproduce import NOTEBOOKS, execute
from annotlib.train import TrainConfig, run_annotation

EPOCH = re.compile(r"^(\S+)  epoch (\d+)/(\d+)  train_loss (\S+)  val_mAP (\S+)  (\d+) img/s  ETA (\S+)$")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=80, image_size=32, seed=2)


def test_fit_prints_one_line_per_epoch_with_the_history_numbers(synthetic_root, tmp_path, capsys):
    cfg = TrainConfig(dataset="synthetic", data_root=str(synthetic_root), image_size=32, backbone="resnet10t",
                      epochs=2, batch_size=16, loss="bce", seed=0, device="cpu", progress=True)
    out = tmp_path / "runs" / "p0" / "synthetic" / "bce-seed0"
    run_annotation(cfg, out)
    lines = capsys.readouterr().out.splitlines()
    epochs = [EPOCH.match(line) for line in lines if EPOCH.match(line)]
    with open(out / "history.csv") as file:
        history = list(csv.DictReader(file))
    assert len(epochs) == len(history) == 2
    for match, row in zip(epochs, history):
        name, k, n, loss, metric, speed, _ = match.groups()
        assert (name, k, n) == ("p0/synthetic/bce-seed0", row["epoch"], "2")
        assert float(loss) == pytest.approx(float(row["train_loss"]), abs=1e-4)
        assert float(metric) == pytest.approx(float(row["val_mAP"]), abs=1e-4)
        assert float(speed) == pytest.approx(float(row["train_img_per_s"]), abs=0.5)
    assert epochs[-1].group(7) == "0s"  # nothing left after the last epoch
    # before them the images' decoding and the start; after them the end
    assert lines.index("p0/synthetic/bce-seed0: training epochs 1 to 2") == lines.index(epochs[0].string) - 1
    assert re.fullmatch(r"p0/synthetic/bce-seed0: trained in \d+s; best epoch [12], val_mAP \S+", lines[-1])

    run_annotation(cfg.replace(progress=False), tmp_path / "quiet")
    assert capsys.readouterr().out == ""


@pytest.mark.slow
@pytest.mark.parametrize("progress", [True, False])
def test_the_grid_runner_streams_the_epoch_lines_of_a_notebook(synthetic_root, tmp_path, capfd, progress):
    out = tmp_path / "runs" / "p0" / "synthetic" / "bce-seed0"
    execute("01_unsymmetric_loss.ipynb", out / "01_unsymmetric_loss.ipynb",
            {"dataset": "synthetic", "data_root": os.path.relpath(synthetic_root, NOTEBOOKS), "loss": "bce",
             "image_size": 32, "epochs": 2, "batch_size": 16, "output_dir": os.path.relpath(out, NOTEBOOKS),
             "progress": progress, "device": "cpu", "projections": ["tsne"], "cam_images": 2})
    terminal, errors = capfd.readouterr()
    epochs = [m.group(1, 2) for m in map(EPOCH.match, terminal.splitlines()) if m]
    assert epochs == ([("p0/synthetic/bce-seed0", "1"), ("p0/synthetic/bce-seed0", "2")] if progress else [])
    assert "without encryption" not in errors  # the kernel's start-up warning is filtered
    assert noise(out / "01_unsymmetric_loss.ipynb", tmp_path) == []
