"""P4 (Yoon et al. 2020, ETRI Journal): joint classification and captioning on one CNN, with a
disagreement loss between the caption decoder's attention and the class activation map of
the true class; against the same model without that loss and the two single-task models."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..train.config import TrainConfig
from . import NOTEBOOK_FIELDS, REAL, REAL_SEEDS, Claim, Paper, Run, method_results, restrict_methods

JOINT = {"task": "captioning", "head": "cam_captioner", "loss": "joint_caption"}
# The loss weights of each method (JointCaptionLoss): P4's model, its joint baseline without
# L_dis, and the single-task baselines on the same backbone, resolution and epochs.
METHODS: dict[str, dict] = {
    "joint_dis": {"lambda_cls": 1.0, "lambda_cap": 1.0, "lambda_dis": 0.1},
    "joint": {"lambda_cls": 1.0, "lambda_cap": 1.0, "lambda_dis": 0.0},
    "captioner": {"lambda_cls": 0.0, "lambda_cap": 1.0, "lambda_dis": 0.0},
    "classifier": {"lambda_cls": 1.0, "lambda_cap": 0.0, "lambda_dis": 0.0},
}
# Without a captioner to train, the classifier-only model is built without one (a module that
# gets no gradient is refused by DistributedDataParallel).
WITHOUT_CAPTIONER = ("classifier",)
METHOD_FIELDS = ("task", "head", "loss")
METHOD_LOSS_OPTIONS = ("lambda_cls", "lambda_cap", "lambda_dis")
METHOD_HEAD_OPTIONS = ("captioner",)

# P4 gives no hyper-parameters; all of these are assumed. MobileNetV2 (ImageNet weights from a
# local file, weights_file=...), fine-tuned at 1e-4 under a decoder at 4e-4 (Show-Attend-and-
# Tell's learning rate) with Adam and OneCycle, 224 px (a 7 x 7 grid), batch 32, 20 epochs,
# no flips (captions say left and right), the decoder's 512-wide layers, beam 3, words seen
# >= 5 times, L_dis = KL(attention || softmax CAM), lambda_cap 1, lambda_dis 0.1.
RECIPE = TrainConfig(paper="p4", dataset="cub", backbone="mobilenetv2_100", image_size=224, normalize="backbone",
                     hflip=False, vflip=False, optimizer="adam", lr=4e-4, backbone_lr=1e-4, batch_size=32,
                     epochs=20, seed=1, loss_kwargs=METHODS["joint_dis"], **JOINT)
# CPU-sized on the synthetic set: a small backbone from scratch (trained with both heads), a
# narrow decoder and short captions. The four methods took 253 s at 3 epochs on one thread of
# two busy cores, the backbone's share the largest; 2 epochs keep them near two minutes.
QUICK = RECIPE.replace(dataset="synthetic", backbone="resnet10t", image_size=64, lr=2e-3, backbone_lr=None,
                       batch_size=64, epochs=2, normalize="dataset",
                       head_kwargs={"embed_dim": 64, "hidden_dim": 128, "attention_dim": 64},
                       task_kwargs={"max_caption_length": 20, "max_length": 16})
PAPER_DATASETS = ["flickr8k-concepts", "cub", "flowers"]


def _without(options: dict, names: tuple[str, ...]) -> dict:
    return {k: v for k, v in options.items() if k not in names}


def p4_config(dataset: str = "synthetic", method: str = "joint_dis", **fields) -> TrainConfig:
    """P4's recipe for ``dataset`` (CPU-sized on the synthetic set) trained as ``method`` (a key
    of :data:`METHODS`), then any other :class:`TrainConfig` ``fields``. The method sets the
    task, head, loss and the loss weights (and, for "classifier", a head without captioner);
    ``loss_kwargs`` and ``head_kwargs`` given here keep their other options (the divergence,
    the decoder's sizes)."""
    if method not in METHODS:
        raise ValueError(f"unknown P4 method {method!r}; known: {', '.join(METHODS)}")
    clash = sorted(set(fields) & set(METHOD_FIELDS))
    clash += sorted(set(fields.get("loss_kwargs", {})) & set(METHOD_LOSS_OPTIONS))
    clash += sorted(set(fields.get("head_kwargs", {})) & set(METHOD_HEAD_OPTIONS))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the P4 method, not by a field")
    base = QUICK if dataset == "synthetic" else RECIPE
    values = {**base.to_dict(), **fields, **JOINT, "dataset": dataset}
    values["loss_kwargs"] = {**_without(values["loss_kwargs"], METHOD_LOSS_OPTIONS), **METHODS[method]}
    if method in WITHOUT_CAPTIONER:
        values["head_kwargs"] = {**values["head_kwargs"], "captioner": False}
    return TrainConfig.from_dict(values)


def shared_fields(config: TrainConfig) -> dict:
    """The fields of ``config`` that every method of a run shares (all but what the method sets)."""
    values = {k: v for k, v in config.to_dict().items() if k not in (*METHOD_FIELDS, "dataset")}
    values["loss_kwargs"] = _without(values["loss_kwargs"], METHOD_LOSS_OPTIONS)
    values["head_kwargs"] = _without(values["head_kwargs"], METHOD_HEAD_OPTIONS)
    return values


def trainings(run: Run) -> list[tuple[str, TrainConfig]]:
    fields = shared_fields(run.config)
    return [(method, p4_config(run.config.dataset, method, **fields)) for method in run.parameters["methods"]]


def notebook_parameters(run: Run) -> dict:
    # the method's share of loss_kwargs and head_kwargs stays out; their other options travel in extra
    values = shared_fields(run.config)
    named = {name: values.pop(name) for name in NOTEBOOK_FIELDS if name != "dataset"}
    return {"dataset": run.config.dataset, **named, **run.parameters, "extra": values}


def grid(profile: str, datasets: list[str] | None, seeds: list[int] | None) -> list[Run]:
    methods = list(METHODS)
    if profile == "smoke":
        # P4's model and the decoder-free baseline cover both code paths; all four took 84 s.
        base, datasets, seeds = QUICK.replace(epochs=1, image_size=48), ["synthetic"], seeds or [0]
        methods = ["joint_dis", "classifier"]
    elif profile == "quick":
        base, datasets, seeds = QUICK, ["synthetic"], seeds or [0]
    elif profile == "real":
        # Flickr8k (the shared subset) with its mined concepts, P4's model against the same
        # joint model without L_dis, the decoder and classifier trained on frozen features.
        base, datasets, seeds = RECIPE.replace(**REAL, epochs=5), datasets or ["flickr8k-concepts"], \
            seeds or REAL_SEEDS
        methods = ["joint_dis", "joint"]
    else:
        base, datasets, seeds = RECIPE, datasets or PAPER_DATASETS, seeds or [1]
    return [Run("p4", f"seed{s}", base.replace(dataset=d, seed=s), {"methods": methods})
            for d in datasets for s in seeds]


def differences(metrics: dict) -> list[str]:
    """How a run differs from P4's setting (as far as P4 states one: CUB and Flowers, a CNN
    with a shared multimodal embedding; every hyper-parameter is ours)."""
    config = metrics["config"]
    out = [f"{name} {config[key]} (assumed recipe: {getattr(RECIPE, key)})" for name, key in (
        ("backbone", "backbone"), ("image size", "image_size")) if config[key] != getattr(RECIPE, key)]
    out.append("pretrained weights from a local file" if config.get("weights_file")
               else "random init (P4: ImageNet-pretrained, assumed)")
    if config["backbone_lr"] == 0:
        out.append("backbone frozen (assumed recipe: fine-tuned)")
    if config["dataset"] == "synthetic":
        out.append("synthetic data")
    elif config["dataset"].startswith("flickr8k"):
        out.append("Flickr8k with concept labels mined from its training captions (P4: CUB-200, Oxford-102)")
    out.append("no shared multimodal embedding (both heads read the CNN's map)")
    out.append("L_dis = KL(attention || CAM) is our reading of P4's abstract")
    out.append("every hyper-parameter assumed (P4 gives none)")
    return out


PAPER = Paper(
    key="p4", title="P4: joint classification and captioning with a CAM disagreement loss (Yoon et al. 2020)",
    notebook="05_cam_captioning.ipynb", grid=grid, notebook_parameters=notebook_parameters,
    restrict=restrict_methods, methods=tuple(METHODS),
    trainings=trainings, row_keys=("method",), row=lambda metrics: {"method": metrics["variant"]},
    columns=("BLEU-4", "METEOR", "CIDEr-D", "accuracy", "mAP", "pointing_game_cam", "pointing_game_attention",
             "agreement_kl"),
    reported=lambda dataset, row: {},  # P4's tables are not available to us
    differences=differences,
    # P4's model (joint training with L_dis) against each model a claim names; the second claim
    # is on two tasks, each against its single-task model.
    claims=tuple(Claim(text, metrics=metrics, better={"method": "joint_dis"}, than=({"method": than},),
                       setting="CUB-200, Oxford-102 (P4's model: joint training with the disagreement loss)")
                 for text, metrics, than in (
        ("the disagreement loss improves captioning (BLEU, METEOR, CIDEr) over joint training without it",
         ("BLEU-4", "METEOR", "CIDEr-D"), "joint"),
        ("joint training improves both tasks over the captioner-only and classifier-only models",
         ("BLEU-4", "CIDEr-D"), "captioner"),
        ("joint training improves both tasks over the captioner-only and classifier-only models",
         ("accuracy", "mAP"), "classifier"),
        ("with the disagreement loss the decoder attends where the class's CAM is (better localisation)",
         ("pointing_game_attention",), "joint"))) + (
        # What L_dis optimises, measured on decoded captions against the true classes' CAMs:
        # lower is better.
        Claim("with the disagreement loss the decoder attends where the class's CAM is (better localisation)",
              metrics=("agreement_kl",), better={"method": "joint_dis"}, than=({"method": "joint"},),
              direction=-1, setting="CUB-200, Oxford-102 (P4's model: joint training with the disagreement loss)"),),
)


# ---------------------------------------------------------------- notebook helpers


def run_methods(dataset: str, methods, output_dir, **fields):
    """Train and evaluate each of ``methods`` (keys of :data:`METHODS`) into
    ``<output_dir>/<method>/`` (resumable; a finished one is read back). Returns one row per
    method: method, seed and the test metrics by name."""
    return method_results([(method, p4_config(dataset, method, **fields)) for method in methods], output_dir)


def caption_examples(run, outputs, count: int):
    """The first ``count`` test images: predicted class, generated caption, two references."""
    import pandas as pd
    split, task = run.splits["test"], run.task
    generated = task.captions(outputs) if "tokens" in outputs else [""] * len(split)
    rows = [{"image": split.image_paths[i].name, "predicted class": task.classes[int(outputs["predicted"][i])],
             "generated": generated[i], "references": " | ".join(split.captions[i][:2])}
            for i in range(min(count, len(split)))]
    return pd.DataFrame(rows)


def _heat(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """An ``h x w`` map upsampled (bilinear) to ``size x size`` and min-max scaled to [0, 1]."""
    heat = F.interpolate(grid_map[None, None].float().cpu(), size=(size, size), mode="bilinear",
                         align_corners=False)[0, 0]
    low, high = heat.min(), heat.max()
    return ((heat - low) / (high - low) if high > low else torch.zeros_like(heat)).numpy()


def plot_word_attention(run, outputs, indices, max_words: int = 8):
    """P4's figure: per test image, the image, the CAM of its predicted class, then the
    attention map of each generated word (up to ``max_words``). Returns the Figure."""
    import matplotlib.pyplot as plt

    from .. import viz
    images, task = run.images["test"], run.task
    indices = list(indices)
    fig, axes = plt.subplots(len(indices), max_words + 2, figsize=(1.9 * (max_words + 2), 2.1 * len(indices)),
                             squeeze=False)
    for row, i in zip(axes, indices):
        image = images[i]
        size = image.shape[0]
        row[0].imshow(image)
        row[0].set_title(run.splits["test"].image_paths[i].name[:14], fontsize="x-small")
        row[1].imshow(viz.overlay(image, _heat(outputs["cam"][i], size)))
        row[1].set_title(f"CAM: {task.classes[int(outputs['predicted'][i])][:14]}", fontsize="x-small")
        tokens = outputs["tokens"][i].tolist() if "tokens" in outputs else []
        for t, token in enumerate(tokens[:max_words]):
            if token == task.vocabulary.end_id:
                word = "<end>"
            else:
                word = task.vocabulary.tokens[token]
            row[2 + t].imshow(viz.overlay(image, _heat(outputs["attention"][i, t], size)))
            row[2 + t].set_title(word, fontsize="x-small")
            if token == task.vocabulary.end_id:
                break
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def embedding_targets(run, split: str = "test"):
    """What colours the image-embedding map: class ids, or the multi-hot concepts (each image
    then takes its most frequent one, :func:`annotlib.viz.plot_embedding`)."""
    return run.task.targets(run.splits[split])
