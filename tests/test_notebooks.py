"""Notebooks: committed without outputs, a tagged parameters cell, and executed through
papermill with tiny parameters (the P0 and report notebooks run in test_reproduce's smoke run)."""

import json
import os
import re

import papermill
import pytest

from annotlib.data.synthetic import generate_synthetic
from annotlib.reproduce import NOTEBOOKS, execute

ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def noise(executed, *local) -> list[str]:
    """What an executed notebook holds that a reader should not see: a carriage-return progress
    bar, tqdm's widget warning, or an absolute path of this machine (the repository, each of
    ``local``). An empty list when it holds none."""
    text = json.loads(executed.read_text())
    streams = ["".join(o["text"]) for c in text["cells"] if c["cell_type"] == "code"
               for o in c["outputs"] if o["output_type"] == "stream"]
    found = [f"a progress bar: {s[:80]!r}" for s in streams if "\r" in s]
    found += ["TqdmWarning" for s in streams if "TqdmWarning" in s]
    whole = json.dumps(text)
    # absolute only: a relative path up to the root ("../../tmp/...") ends with the same text
    found += [f"the local path {path}" for path in map(str, (NOTEBOOKS.parent, *local))
              if re.search(r"(?<!\.)" + re.escape(path), whole)]
    return found


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_committed_without_outputs_with_a_parameters_cell(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    parameters = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(parameters) == 1 and parameters[0] is code[1]  # imports first, then parameters
    # Typed and commented: "name: type = value  # what it is".
    for line in "".join(parameters[0]["source"]).splitlines():
        assert ": " in line.split("=")[0] and "  # " in line, line


@pytest.mark.slow
def test_datasets_notebook_runs_and_saves_its_figures(tmp_path):
    root = generate_synthetic(tmp_path / "synthetic", num_images=60, image_size=48, seed=3)
    out = tmp_path / "figures"
    papermill.execute_notebook(str(NOTEBOOKS / "00_datasets.ipynb"), str(tmp_path / "executed.ipynb"),
                               parameters={"dataset": "synthetic", "data_root": str(root), "grid_images": 4,
                                           "image_size": 48, "output_dir": str(out)},
                               kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS))
    for name in ("label_frequency", "cooccurrence", "images"):
        assert (out / f"{name}.png").stat().st_size > 1000
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    summary = next(o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                   if "text/html" in o.get("data", {}))
    assert "train" in "".join(summary["data"]["text/html"]) and "test" in "".join(summary["data"]["text/html"])


@pytest.mark.slow
def test_cam_captioning_notebook_trains_p4s_methods_and_draws_its_figures(tmp_path, monkeypatch):
    # The kernel's many small decoder ops ran far slower with two threads on two busy cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = generate_synthetic(tmp_path / "synthetic", num_images=80, image_size=48, seed=3)
    out = tmp_path / "p4"
    # As the grid runner runs it: with progress, paths relative to the notebooks' folder.
    execute("05_cam_captioning.ipynb", tmp_path / "executed.ipynb",
            {"dataset": "synthetic", "data_root": os.path.relpath(root, NOTEBOOKS), "image_size": 48, "epochs": 1,
             "batch_size": 16, "output_dir": os.path.relpath(out, NOTEBOOKS), "progress": True, "device": "cpu",
             "projections": ["tsne"], "grid_images": 4, "attention_images": 2,
             "extra": {"task_kwargs": {"min_count": 2, "max_length": 10}}})
    for name in ("captions", "attention_joint_dis", "attention_joint", "embeddings"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert noise(tmp_path / "executed.ipynb", tmp_path) == []
    results = (out / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in results[1:]] == ["joint_dis", "joint", "captioner", "classifier"]
    assert "pointing_game_attention" in results[0] and "METEOR" in results[0]


def test_noise_finds_progress_bars_widget_warnings_and_local_paths(tmp_path):
    import nbformat

    outputs = [nbformat.v4.new_output("stream", name="stderr", text="epoch 1/2:  50%|#####     | 1/2\r"),
               nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found"),
               nbformat.v4.new_output("stream", name="stdout", text=f"figures in {tmp_path}/out\n")]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fit()", outputs=outputs)])
    nbformat.write(notebook, tmp_path / "noisy.ipynb")
    assert len(noise(tmp_path / "noisy.ipynb", tmp_path)) == 3
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="epoch 1/2  loss 0.5\n"),
                                 nbformat.v4.new_output("stream", name="stdout", text=f"in ../..{tmp_path}/out\n")]
    nbformat.write(notebook, tmp_path / "quiet.ipynb")
    assert noise(tmp_path / "quiet.ipynb", tmp_path) == []
