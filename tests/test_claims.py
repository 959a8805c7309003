"""Claims tested in the report: per-image test outputs that give back the evaluated metrics,
and claims tables built from a hand-made reports folder, each interval against a slow loop
over materialised resamples and each verdict by the rule."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from reporting import fake_metrics

from annotlib.data import Split
from annotlib.io import CorruptFileError
from annotlib.metrics import annotation_metrics
from annotlib.papers import PAPERS, Claim
from annotlib.papers.p0 import p0_config
from annotlib.papers.p4 import p4_config
from annotlib.report import BOOTSTRAP, NO_INTERVAL, _claim_list, claim_tables, collect_results, write_report
from annotlib.stats import (
    TEST_OUTPUTS,
    bootstrap_indices,
    multilabel_outputs,
    read_test_outputs,
    verdict,
    weighted_metric,
    write_test_outputs,
)
from annotlib.tasks import create_task

N, C = 40, 6
IMAGES = [Path(f"/data/img{i:03d}.jpg") for i in range(N)]


def split(labels=None, category_ids=None) -> Split:
    classes = [f"c{k}" for k in range(C)]
    return Split("toy", "test", classes, IMAGES, labels=labels,
                 categories=classes if category_ids is not None else None, category_ids=category_ids)


def toy_targets(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(N, C, generator=g) < torch.linspace(0.6, 0.15, C)).long()
    targets[0] = 1  # every label has a positive
    return targets


def ones() -> torch.Tensor:
    return torch.ones(1, N, dtype=torch.int64)


def unit(outputs: dict, column: str) -> float:
    """A column's weighted metric, rebuilt from the outputs as written and read back, at unit weights."""
    return weighted_metric(outputs, column)(ones()).item()


def round_trip(tmp_path, arrays) -> dict:
    write_test_outputs(tmp_path / TEST_OUTPUTS, arrays, IMAGES)
    return read_test_outputs(tmp_path / TEST_OUTPUTS)


# -- what each task keeps gives back what it evaluated -------------------------------------


def test_multilabel_outputs_give_the_evaluated_metrics(tmp_path):
    task = create_task("multilabel", "bce")
    targets = toy_targets()
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(1)) + 1.5 * targets
    task.thresholds = torch.linspace(0.3, 0.7, C, dtype=torch.float64)
    evaluated = task.evaluate(logits, split(targets))
    outputs = round_trip(tmp_path, task.test_outputs(logits, split(targets)))
    for column in ("CP@0.5", "CF1@0.5", "OF1@0.5", "N+@0.5", "CR@tuned", "CF1@tuned", "N+@tuned"):
        assert unit(outputs, column) == evaluated[column], column  # the decisions are kept exactly
    assert unit(outputs, "mAP") == evaluated["mAP"]
    assert weighted_metric(outputs, "accuracy") is None and weighted_metric(outputs, "CF1@top3") is None
    # P0's evaluation predicts where score > threshold: the kept decisions follow
    strict = create_task("multilabel", "bce", strict_threshold=True)
    strict.thresholds = task.thresholds
    logits[:N // 2] = 0  # scores exactly at 0.5, where > and >= differ
    outputs = round_trip(tmp_path, strict.test_outputs(logits, split(targets)))
    evaluated = strict.evaluate(logits, split(targets))
    assert evaluated["OF1@0.5"] != task.evaluate(logits, split(targets))["OF1@0.5"]
    assert all(unit(outputs, column) == evaluated[column] for column in ("CF1@0.5", "OF1@0.5", "N+@tuned"))


def test_label_sequence_outputs_give_the_decoded_metrics(tmp_path):
    task = create_task("label_sequence", "cross_entropy", {"ignore_index": -1})
    targets = toy_targets(2)
    g = torch.Generator().manual_seed(2)
    decoded = ((targets == 1) ^ (torch.rand(N, C, generator=g) < 0.2)).float()
    outputs = {"labels": decoded, "scores": torch.rand(N, C, generator=g) * 0.5 + 0.5 * decoded}
    evaluated = task.evaluate(outputs, split(targets))
    kept = round_trip(tmp_path, task.test_outputs(outputs, split(targets)))
    for column in ("CF1@decoded", "OF1@decoded", "N+@decoded"):
        assert unit(kept, column) == evaluated[column], column
    assert unit(kept, "mAP") == evaluated["mAP"]


def test_metric_learning_outputs_give_accuracy_and_retrieval_map(tmp_path):
    task = create_task("metric_learning", "cross_entropy", m=0)
    ids = torch.arange(N) % 4
    g = torch.Generator().manual_seed(3)
    data = dataclasses.replace(split(category_ids=ids), categories=["a", "b", "c", "d"])
    task.setup({"train": data, "val": data, "test": data}, seed=0)
    outputs = {"logits": torch.randn(N, 4, generator=g) + 2 * torch.nn.functional.one_hot(ids, 4),
               "embedding": torch.randn(N, 3, generator=g) + ids[:, None].float()}
    evaluated = task.evaluate(outputs, data)
    kept = round_trip(tmp_path, task.test_outputs(outputs, data))
    assert unit(kept, "accuracy") == pytest.approx(evaluated["accuracy"], abs=1e-6)  # evaluate: float32
    assert unit(kept, "mAP") == pytest.approx(evaluated["mAP"], abs=1e-6)  # float32 per-query APs


def test_test_outputs_file_is_checked(tmp_path):
    path = tmp_path / TEST_OUTPUTS
    path.write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError, match=f"{TEST_OUTPUTS} cannot be read"):
        read_test_outputs(path)
    write_test_outputs(path, {}, IMAGES)  # nothing to keep: an older file goes
    assert not path.exists()
    np.savez(path, scores=np.zeros((2, 2)))
    with pytest.raises(CorruptFileError, match="no 'images' entry"):
        read_test_outputs(path)


def test_claims_name_row_keys_and_columns_of_their_paper():
    for paper in PAPERS.values():
        assert paper.claims and all(isinstance(c, Claim) for c in paper.claims)
    bad = Claim("x", metrics=("CF1@0.5",), better={"method": "a"}, than=({"method": "b"},))
    with pytest.raises(ValueError, match=re.escape("p0 claim 'x': unknown columns [], unknown row keys ['method']")):
        bad.check("p0", ("loss",), ("CF1@0.5",))
    with pytest.raises(ValueError, match=re.escape("unknown columns ['mAP']")):
        Claim("y", metrics=("CF1@0.5",), than_metrics=("mAP",)).check("p0", ("loss",), ("CF1@0.5",))


# -- claims tables from a hand-made reports folder -------------------------------------------


def scores_of(targets: torch.Tensor, strength: float, seed: int) -> torch.Tensor:
    """Scores in [0, 1] that rank positives higher the larger ``strength`` is."""
    g = torch.Generator().manual_seed(seed)
    return ((1 - strength) * torch.rand(N, C, generator=g) + strength * targets).clamp(0, 1)


THRESHOLDS = torch.full((C,), 0.35)
# (loss, seed) -> how well its scores separate positives; focal is not run, asl beats ours.
STRENGTH = {("unsymmetric", 0): 0.5, ("unsymmetric", 1): 0.45, ("bce", 0): 0.1, ("bce", 1): 0.15,
            ("asl", 0): 0.9, ("asl", 1): 0.85}


def p0_run(root: Path, loss: str, seed: int, *, keep_outputs: bool = True):
    targets = toy_targets()
    scores = scores_of(targets, STRENGTH[loss, seed], seed=10 * seed + len(loss))
    test = {f"{k}@{q}": v for q, t in (("0.5", 0.5), ("tuned", THRESHOLDS))
            for k, v in annotation_metrics(scores, targets, t).items()}
    run = fake_metrics(root / "runs/p0/synthetic", f"{loss}-seed{seed}", p0_config("synthetic", loss, seed=seed),
                       test, labels=C)
    if keep_outputs:
        arrays = multilabel_outputs(scores, targets, {"0.5": (scores, 0.5), "tuned": (scores, THRESHOLDS)})
        write_test_outputs(run / TEST_OUTPUTS, arrays, IMAGES)
    return scores


def slow_interval(pairs, metric: str, threshold) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of metric(A) - metric(B), each resample's
    images materialised and the unweighted metric called on them (a Python loop)."""
    targets = toy_targets()
    differences = [np.mean([annotation_metrics(a[i], targets[i], threshold)[metric]
                            - annotation_metrics(b[i], targets[i], threshold)[metric] for a, b in pairs])
                   for i in bootstrap_indices(N, BOOTSTRAP["n_resamples"], BOOTSTRAP["seed"])]
    return tuple(np.percentile(differences, [2.5, 97.5]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("toy")
    scores = {key: p0_run(root, *key) for key in STRENGTH}
    joint = p4_config("synthetic", "joint_dis")
    fake_metrics(root / "runs/p4/synthetic/seed0", "joint_dis", joint, {"BLEU-4": 0.2, "CIDEr-D": 0.5})
    fake_metrics(root / "runs/p4/synthetic/seed0", "joint", p4_config("synthetic", "joint"),
                 {"BLEU-4": 0.1, "CIDEr-D": 0.3})
    return root, scores


def rows_of(root: Path) -> dict[str, list[dict]]:
    return claim_tables(collect_results(root), "toy")


def test_claims_table_intervals_against_a_slow_loop_and_their_verdicts(folder):
    root, scores = folder
    rows = rows_of(root)["p0"]
    first = [r for r in rows if r["claim"] == "C1"]
    assert {r["setting"].split(";")[0] for r in rows} == {"toy: resnet10t, 64 px, 6 epochs"}
    by = {(r["metric"], r["against"].split(":")[0]): r for r in first}
    for metric, threshold in (("CF1", 0.5), ("CF1", THRESHOLDS), ("N+", 0.5)):
        column = f"{metric}@{'0.5' if isinstance(threshold, float) else 'tuned'}"
        digits = 0 if metric == "N+" else 3
        for than in ("bce", "asl"):
            row = by[column, than]
            low, high = slow_interval([(scores["unsymmetric", s], scores[than, s]) for s in (0, 1)],
                                      metric, threshold)
            assert row["interval"] == f"[{low:+.{digits}f}, {high:+.{digits}f}] (2 seeds)"
            assert row["verdict"] == verdict((low, high)), (column, than)
    # ours separates positives better than bce's scores and worse than asl's
    assert by["CF1@0.5", "bce"]["verdict"] == by["CF1@tuned", "bce"]["verdict"] == "reproduced"
    assert by["CF1@0.5", "asl"]["verdict"] == by["CF1@tuned", "asl"]["verdict"] == "not reproduced"
    assert by["CF1@0.5", "focal"]["verdict"] == "not run" and by["CF1@0.5", "focal"]["against"] == "focal: not run"
    # C2 compares two columns of the same runs, loss by loss
    tuned = {r["setting"].split("; ")[1]: r for r in rows if r["claim"] == "C2"}
    assert set(tuned) == {"loss=asl", "loss=bce", "loss=unsymmetric"}
    bce = tuned["loss=bce"]
    assert bce["metric"] == "CF1@tuned vs CF1@0.5"
    pairs = [(scores["bce", s], scores["bce", s]) for s in (0, 1)]
    targets = toy_targets()
    differences = [np.mean([annotation_metrics(a[i], targets[i], THRESHOLDS)["CF1"]
                            - annotation_metrics(b[i], targets[i], 0.5)["CF1"] for a, b in pairs])
                   for i in bootstrap_indices(N, BOOTSTRAP["n_resamples"], BOOTSTRAP["seed"])]
    low, high = np.percentile(differences, [2.5, 97.5])
    assert bce["interval"] == f"[{low:+.3f}, {high:+.3f}] (2 seeds)" and bce["verdict"] == verdict((low, high))
    values = collect_results(root).set_index(["loss", "seed"])
    difference = np.mean([values.loc[("bce", s), "CF1@tuned"] - values.loc[("bce", s), "CF1@0.5"] for s in (0, 1)])
    assert bce["difference"] == f"{difference:+.3f}"


def test_mean_and_std_of_each_side_and_claims_without_an_interval(folder, tmp_path):
    root, _ = folder
    rows = rows_of(root)
    row = next(r for r in rows["p0"] if r["claim"] == "C1" and r["metric"] == "CF1@0.5" and "bce" in r["against"])
    values = collect_results(root).set_index(["loss", "seed"])["CF1@0.5"]
    ours = [values["unsymmetric", s] for s in (0, 1)]
    assert row["ours"] == f"unsymmetric: {np.mean(ours):.3f} ± {np.std(ours, ddof=1):.3f} (n=2)"
    bleu = next(r for r in rows["p4"] if r["claim"] == "C1" and r["metric"] == "BLEU-4")
    assert bleu["ours"] == "joint_dis: 0.200 (n=1)" and bleu["difference"] == "+0.100"
    assert bleu["verdict"] == f"no interval: {NO_INTERVAL['BLEU-4']}" and bleu["interval"] == "–"
    assert next(r for r in rows["p4"] if r["metric"] == "METEOR")["verdict"] == "not measured"
    assert {r["verdict"] for r in rows["p4"] if r["claim"] in ("C2", "C3")} == {"not run"}
    # a run written before test outputs were kept: mean ± std, and why there is no interval
    p0_run(tmp_path, "unsymmetric", 0)
    p0_run(tmp_path, "bce", 0, keep_outputs=False)
    row = rows_of(tmp_path)["p0"][0]
    assert row["verdict"] == f"no interval: runs/p0/synthetic/bce-seed0 has no {TEST_OUTPUTS} (run before " \
        "per-image outputs were kept, or its task keeps none)"


def test_claims_section_opens_results_md_and_the_page(folder):
    root, _ = folder
    write_report(root)
    md = (root / "results.md").read_text(encoding="utf-8")
    assert md.index("## Claims") < md.index("## Results") < md.index("## P0")
    assert "- **C1** P0's loss gives a higher CF1 and N+ than BCE, focal loss and ASL (the paper: " in md
    assert f"| C1 | synthetic | {root.name}: resnet10t, 64 px, 6 epochs" in md  # the profile: its folder
    page = (root / "index.html").read_text(encoding="utf-8")
    assert page.index("<h2 id='claims'>Claims</h2>") < page.index("<h2 id='p0'>") \
        and "<table class='claims'>" in page and "<td class='key verdict'>not reproduced</td>" in page


def test_a_claim_tested_on_two_column_sets_is_listed_once_with_both_numbers():
    listed = _claim_list(PAPERS["p4"])
    assert [n for n, _, _ in listed] == ["C1", "C2, C3", "C4, C5"]
    assert len({text for _, text, _ in listed}) == len(listed)
    assert [n for n, _, _ in _claim_list(PAPERS["p0"])] == ["C1", "C2"]
