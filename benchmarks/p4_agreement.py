"""P4's attention-CAM agreement of trained runs under several definitions, to see what moves it.

For each run folder (a finished ``captioning`` run, e.g. ``<reports>/paper/runs/p4/<dataset>/
seed1/joint_dis``) and each split asked for, prints L_dis (the run's divergence, with its CAM
normalisation; and Jensen-Shannon with the scale-free ReLU one), the share of pairs whose maps peak in the same
cell, and the mean Pearson correlation of the two maps over the grid, for the attention

- of the decoded caption (what evaluation sees) or teacher-forced on each reference caption
  (what training sees; the mean over the image's references),

against the CAM of the image's true classes (as L_dis pairs them, the task's own pairing code)
or of the top predicted class. Then the maps' sharpness: the entropy of the pooled attention
and of the softmax CAMs over ``log N`` (1: uniform), the CAMs' spatial standard deviation, L_dis
of a uniform attention (what the CAM's peakiness alone costs), and the share of images whose
predicted class is one of their true classes::

    python benchmarks/p4_agreement.py RUN_DIR [RUN_DIR ...] [--splits test train] [--images 500]
"""

from __future__ import annotations

import argparse
import math

import torch

from annotlib.losses.disagreement import disagreement_loss, mean_class_map
from annotlib.models.captioner import PAD
from annotlib.train import load_run


def _pearson(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    a, c = a - a.mean(1, keepdim=True), c - c.mean(1, keepdim=True)
    return (a * c).sum(1) / (a.norm(dim=1) * c.norm(dim=1)).clamp_min(1e-12)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(1)


@torch.no_grad()
def collect(run, split: str, limit: int) -> dict[str, torch.Tensor]:
    """The first ``limit`` images of ``split``: the task's outputs, the true classes, and the
    teacher-forced attention of every reference caption (``N x K x T x cells``, with its words)."""
    task, model = run.task, run.model.eval()
    data = run.splits[split]
    references = task.vocabulary.encode(data.captions, task.max_caption_length)  # N x K x L
    chunks, forced, words, seen = [], [], [], 0
    for batch in run.batches(split):
        if seen >= limit:
            break
        images = batch["image"]
        chunks.append(task.predict_step(model, images))
        for k in range(references.shape[1]):
            tokens = references[seen:seen + len(images), k].clone()
            tokens[:, 0] = task.vocabulary.start_id  # a missing reference: all PAD words, left out
            attention = model(images, tokens=tokens)["attention"].flatten(2)
            forced.append((k, seen, attention, tokens[:, 1:]))
        seen += len(images)
    outputs = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
    length = max(a.shape[1] for _, _, a, _ in forced)
    cells = forced[0][2].shape[2]
    attention = torch.zeros(seen, references.shape[1], length, cells)
    words = torch.full((seen, references.shape[1], length), PAD, dtype=torch.long)
    for k, start, a, w in forced:
        attention[start:start + len(a), k, :a.shape[1]] = a
        words[start:start + len(a), k, :w.shape[1]] = w
    return {"outputs": outputs, "targets": task.targets(data)[:seen], "forced": attention, "words": words}


def scores(task, attention, cam) -> list[float]:
    """L_dis (run's options); Jensen-Shannon with the ReLU normalisation (bounded, and
    blind to the CAM's scale); the share peaking in the same cell; Pearson, over pairs."""
    attention = attention.flatten(1)
    valid = attention.sum(1) > 0
    cam = cam.flatten(1)
    kl = float(disagreement_loss(attention, cam.view(len(cam), 1, -1), **task.loss.options))
    relu = float(disagreement_loss(attention, cam.view(len(cam), 1, -1), **{
        **task.loss.options, "divergence": "js", "cam_normalisation": "relu"}))
    peak = float((attention.argmax(1) == cam.argmax(1))[valid].float().mean())
    pearson = float(_pearson(attention, cam)[valid].mean())
    return [kl, relu, peak, pearson]


def report(path: str, splits: list[str], limit: int) -> None:
    run = load_run(path, device="cpu")
    task = run.task
    print(f"\n{path}: lambda_dis {task.loss.lambda_dis}, dis_steps {task.dis_steps}, "
          f"dis_target {task.dis_target}, {task.loss.options}")
    for split in splits:
        got = collect(run, split, limit)
        out, targets = got["outputs"], got["targets"]
        cams = out["cams"]
        true_maps = mean_class_map(cams, targets) if task.dis_steps == "all" else cams
        predicted = out["cam"]
        decoded = out["attention"].flatten(2)
        rows = {}
        a, c = task._agreement_maps(decoded, out["tokens"], targets, true_maps)
        rows["decoded, true classes' CAM"] = scores(task, a, c)
        rows["decoded, predicted class's CAM"] = scores(task, task.agreement_attention(out), predicted)
        per_reference = {"true": [], "predicted": []}
        for k in range(got["forced"].shape[1]):
            a, c = task._agreement_maps(got["forced"][:, k], got["words"][:, k], targets, true_maps)
            if a.sum() > 0:
                per_reference["true"].append(scores(task, a, c))
            steps = got["words"][:, k] != PAD
            pooled = (got["forced"][:, k] * steps[..., None]).sum(1) / steps.sum(1, keepdim=True).clamp(min=1)
            if pooled.sum() > 0:
                per_reference["predicted"].append(scores(task, pooled, predicted))
        for name, values in per_reference.items():
            label = "true classes'" if name == "true" else "predicted class's"
            rows[f"teacher-forced, {label} CAM"] = [sum(v) / len(v) for v in zip(*values)]
        print(f"  {split} ({len(targets)} images)")
        print(f"    {'attention, CAM':40s} {'L_dis':>7s} {'JS relu':>7s} {'peak':>6s} {'pearson':>8s}")
        for name, (kl, relu, peak, pearson) in rows.items():
            print(f"    {name:40s} {kl:7.4f} {relu:7.4f} {peak:6.3f} {pearson:8.3f}")

        positives = targets > 0 if targets.ndim == 2 else torch.nn.functional.one_hot(targets, cams.shape[1]).bool()
        has_true = positives.any(1)
        cells = decoded.shape[2]
        log_n = math.log(cells)
        pooled_decoded = task.pooled_attention(out).flatten(1)[has_true]
        mean_true = mean_class_map(cams, targets).flatten(1)[has_true]
        print(f"    entropy / log N: decoded attention {float(_entropy(pooled_decoded).mean()) / log_n:.3f}, "
              f"softmax true-classes CAM {float(_entropy(mean_true.softmax(1)).mean()) / log_n:.3f}, "
              f"softmax predicted CAM {float(_entropy(predicted.flatten(1).softmax(1)).mean()) / log_n:.3f}")
        print(f"    CAM spatial std: true-classes mean {float(mean_true.std(1).mean()):.3f}, predicted "
              f"{float(predicted.flatten(1).std(1).mean()):.3f}, each class {float(cams.flatten(2).std(2).mean()):.3f}")
        uniform = torch.full((int(has_true.sum()), cells), 1.0 / cells)
        print(f"    L_dis of a uniform attention: true-classes CAM "
              f"{float(disagreement_loss(uniform, mean_true.view(len(uniform), 1, -1), **task.loss.options)):.4f}, "
              f"predicted {float(disagreement_loss(torch.full((len(predicted), cells), 1.0 / cells), predicted, **task.loss.options)):.4f}; "
              f"predicted class among the true ones: {float(positives.gather(1, out['predicted'][:, None]).float().mean()):.3f}; "
              f"true classes per image {float(positives.sum(1)[has_true].float().mean()):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished captioning run folders")
    parser.add_argument("--splits", nargs="+", default=["test"], help="splits to score (default: test)")
    parser.add_argument("--images", type=int, default=500, help="the first images of each split (default: 500)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in args.runs:
        report(path, args.splits, args.images)


if __name__ == "__main__":
    main()
