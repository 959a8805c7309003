"""Where to tune per-label MCC thresholds, and from how many positives: measured on finished runs.

For each multi-label run folder given (``metrics.json`` and ``best.pt``, e.g. a P0 or P1
baseline run on Corel-5k), the model's scores on its train, validation and test splits are
computed once, and on train once more through the training augmentation (flips, crops: P0's
code tunes on its training loader); thresholds are then tuned on each of the train split (the
model's own training images, unaugmented), the augmented train split and the validation carve
(where the run has one), keeping the threshold 0.5 for every label with fewer than k positives
there, and the test split is scored with them, at the run's own prediction rule (``>=``, or
``>`` for a strict run). Printed per run and written as JSON::

    python benchmarks/threshold_protocol.py RUN_DIR [RUN_DIR ...] [--k 1 2 3 5 10] [--out FILE]

A cross-validation over folds of train would need a model trained without each fold: the
scores of images a model was trained on are what the train rows show.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from annotlib.io import read_json, write_json
from annotlib.metrics import annotation_metrics
from annotlib.tasks.multilabel import DEFAULT_THRESHOLD, run_thresholds
from annotlib.train import load_run
from annotlib.train.run import AUGMENTED

SHOWN = ("CF1", "OF1", "N+")


def measure(run_dir: Path, ks: list[int]) -> dict:
    run = load_run(run_dir, device="cpu")
    splits = [s for s in ("train", "train" + AUGMENTED, "val", "test") if s.removesuffix(AUGMENTED) in run.splits]
    scores = {s: run.task.scores(run.outputs(s)).cpu() for s in splits}
    labels = {s: run.splits[s.removesuffix(AUGMENTED)].labels for s in scores}
    strict = run.task.strict
    rows = [{"tuned_on": "none (0.5)", "k": None,
             **annotation_metrics(scores["test"], labels["test"], DEFAULT_THRESHOLD, strict=strict)}]
    for split in splits[:-1]:
        for k in ks:
            thresholds, kept = run_thresholds(scores[split], labels[split], k)
            rows.append({"tuned_on": split, "k": k, "kept_at_0.5": int(kept.sum()),
                         **annotation_metrics(scores["test"], labels["test"], thresholds, strict=strict)})
    positives = (labels["val" if "val" in labels else "train"] == 1).sum(0)
    return {"run": str(run_dir), "dataset": run.cfg.dataset, "labels": len(run.classes),
            "config": run.cfg.to_dict(), "images": {s: len(run.splits[s]) for s in run.splits},
            "test_metrics_of_the_run": read_json(run_dir / "metrics.json")["test"],
            "tuning_positives_median": float(positives.median()),
            "tuning_labels_without_positive": int((positives == 0).sum()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2, 3, 5, 10])
    parser.add_argument("--out", type=Path, help="JSON file for the measurements")
    args = parser.parse_args()
    results = []
    for run_dir in args.runs:
        result = measure(run_dir, args.k)
        results.append(result)
        print(f"{run_dir} ({result['dataset']}, {result['labels']} labels, images {result['images']}; "
              f"validation (else train): median {result['tuning_positives_median']:.0f} positives per "
              f"label, {result['tuning_labels_without_positive']} labels without one)")
        print(f"  {'tuned on':15s} {'k':>3s} {'kept':>5s} " + " ".join(f"{m:>6s}" for m in SHOWN))
        for row in result["rows"]:
            k = "" if row["k"] is None else str(row["k"])
            kept = str(row.get("kept_at_0.5", ""))
            print(f"  {row['tuned_on']:15s} {k:>3s} {kept:>5s} "
                  + " ".join(f"{row[m]:6.3f}" if m != "N+" else f"{row[m]:6.0f}" for m in SHOWN))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
