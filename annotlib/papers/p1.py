"""P1 (Wang et al. 2016, CNN-RNN): an LSTM over label embeddings decodes each image's label
set, against independent binary classifiers on the same backbone."""

from __future__ import annotations

from ..train.config import TrainConfig
from . import (
    REAL,
    REAL_SEEDS,
    Claim,
    Paper,
    Run,
    method_notebook_parameters,
    method_results,
    restrict_methods,
)

SEQUENCE = {"task": "label_sequence", "head": "cnn_rnn", "loss": "cross_entropy",
            "loss_kwargs": {"ignore_index": -1}}
# The CNN-RNN and the baselines P1 argues against (independent binary classifiers on the same
# backbone, resolution and epochs): BCE, and P0's loss.
METHODS: dict[str, dict] = {
    "cnn_rnn": SEQUENCE,
    "bce": {"task": "multilabel", "head": "multilabel", "loss": "bce", "loss_kwargs": {}},
    "unsymmetric": {"task": "multilabel", "head": "multilabel", "loss": "unsymmetric", "loss_kwargs": {}},
}
METHOD_FIELDS = ("task", "head", "loss", "loss_kwargs")

# P1: VGG-16 (ImageNet), kept frozen; 224 px. Assumed, as P1 gives no optimisation details:
# Adam 1e-3 on the decoder with OneCycle, batch 32, 20 epochs, horizontal flips, beam 3 and
# the frequency order (both verified), the backbone's mean/std.
RECIPE = TrainConfig(paper="p1", dataset="voc2007", backbone="vgg16", image_size=224, normalize="backbone",
                     hflip=True, vflip=False, optimizer="adam", lr=1e-3, backbone_lr=0.0, batch_size=32,
                     epochs=20, seed=1, **SEQUENCE)
# CPU-sized on the synthetic set: a small backbone from scratch, so it trains with the decoder
# (a frozen random CNN would give the decoder nothing to read).
QUICK = RECIPE.replace(dataset="synthetic", backbone="resnet10t", image_size=64, lr=2e-3, backbone_lr=None,
                       batch_size=64, epochs=3, normalize="dataset")

# P1's published numbers (VGG-16): VOC 2007 mAP; MS-COCO top-3 and NUS-WIDE set metrics.
REPORTED = {
    "voc2007": {"mAP": .840},
    "coco2014": dict(zip(("CP@top3", "CR@top3", "CF1@top3", "OP@top3", "OR@top3", "OF1@top3"),
                         (.660, .556, .604, .692, .664, .678))),
    "nus-wide": dict(zip(("CP@decoded", "CR@decoded", "CF1@decoded", "OP@decoded", "OR@decoded", "OF1@decoded"),
                         (.405, .304, .347, .499, .617, .552))),
}


def p1_config(dataset: str = "synthetic", method: str = "cnn_rnn", **fields) -> TrainConfig:
    """P1's recipe for ``dataset`` (CPU-sized on the synthetic set) trained as ``method`` (a
    key of :data:`METHODS`), then any other :class:`TrainConfig` ``fields``."""
    if method not in METHODS:
        raise ValueError(f"unknown P1 method {method!r}; known: {', '.join(METHODS)}")
    clash = sorted(set(fields) & set(METHOD_FIELDS))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the P1 method, not by a field")
    base = QUICK if dataset == "synthetic" else RECIPE
    values = {**base.to_dict(), **fields, **METHODS[method], "dataset": dataset}
    if method != "cnn_rnn":  # the baselines keep the backbone, resolution and epochs, not the decoder's options
        values["task_kwargs"] = {}
        values["head_kwargs"] = {}
    return TrainConfig.from_dict(values)


def trainings(run: Run) -> list[tuple[str, TrainConfig]]:
    fields = {k: v for k, v in run.config.to_dict().items() if k not in (*METHOD_FIELDS, "dataset")}
    return [(method, p1_config(run.config.dataset, method, **fields)) for method in run.parameters["methods"]]


def grid(profile: str, datasets: list[str] | None, seeds: list[int] | None) -> list[Run]:
    if profile == "smoke":
        base, datasets, seeds, methods = QUICK.replace(epochs=1, image_size=48), ["synthetic"], seeds or [0], \
            ["cnn_rnn", "bce"]
    elif profile == "quick":
        # P0's loss is left to the paper profile: with it, the quick profile took over 15 minutes.
        base, datasets, seeds, methods = QUICK, ["synthetic"], seeds or [0], ["cnn_rnn", "bce"]
    elif profile == "real":
        # VOC 2007 (its official val evaluated as test: the test images are not in the shared
        # copy), the CNN-RNN against BCE on the same frozen features, 10 epochs.
        base, datasets, seeds = RECIPE.replace(**REAL, epochs=10, test_split="val"), datasets or ["voc2007"], \
            seeds or REAL_SEEDS
        methods = ["cnn_rnn", "bce"]
    else:
        base, datasets, seeds = RECIPE, datasets or ["voc2007", "coco2014", "nus-wide"], seeds or [1]
        methods = list(METHODS)
    runs = []
    for d in datasets:
        cfg = base.replace(dataset=d, task_kwargs={"top_k": 3} if d == "coco2014" else {})
        runs += [Run("p1", f"seed{s}", cfg.replace(seed=s), {"methods": methods}) for s in seeds]
    return runs


def differences(metrics: dict) -> list[str]:
    """How a run differs from P1's setting (frozen VGG-16 at 224 px, frequency order)."""
    config = metrics["config"]
    out = [f"{name} {config[key]} (paper: {getattr(RECIPE, key)})" for name, key in (
        ("backbone", "backbone"), ("image size", "image_size")) if config[key] != getattr(RECIPE, key)]
    out.append("pretrained weights from a local file" if config.get("weights_file")
               else "random init (paper: ImageNet-pretrained)")
    if config["backbone_lr"] != 0:
        out.append("backbone fine-tuned (paper: frozen)")
    if config["dataset"] == "synthetic":
        out.append("synthetic data")
    if config["dataset"] == "voc2007" and config["test_split"] == "val":
        out.append("VOC 2007 val evaluated as test (the test images are not here)")
    out.append("optimiser, schedule and epochs assumed (not in P1)")
    return out


PAPER = Paper(
    key="p1", title="P1: CNN-RNN, label sequences decoded by beam search (Wang et al. 2016)",
    notebook="02_cnn_rnn.ipynb", grid=grid, notebook_parameters=method_notebook_parameters(METHOD_FIELDS),
    restrict=restrict_methods, methods=tuple(METHODS), trainings=trainings, row_keys=("method",), row=lambda metrics: {"method": metrics["variant"]},
    columns=("mAP", "CF1@decoded", "OF1@decoded", "N+@decoded", "CF1@0.5", "OF1@0.5", "N+@0.5"),
    reported=lambda dataset, row: REPORTED.get(dataset, {}) if row.get("method") == "cnn_rnn" else {},
    differences=differences,
    claims=(Claim("the recurrent decoder beats independent binary classifiers (BCE) on the same backbone",
                  metrics=("mAP", "CF1@decoded", "OF1@decoded"), than_metrics=("mAP", "CF1@0.5", "OF1@0.5"),
                  better={"method": "cnn_rnn"}, than=({"method": "bce"},),
                  setting="VOC 2007, MS-COCO, NUS-WIDE; VGG-16 (its label sets decoded, BCE's at 0.5)"),),
)


def run_methods(dataset: str, methods, output_dir, **fields):
    """Train and evaluate each of ``methods`` (keys of :data:`METHODS`) into
    ``<output_dir>/<method>/`` (resumable; a finished one is read back). Returns one row per
    method: method, seed and the test metrics by name."""
    return method_results([(method, p1_config(dataset, method, **fields)) for method in methods], output_dir)


def beam_ablation(run, beams=(1, 3, 5)):
    """The test metrics of a finished CNN-RNN ``run`` decoded with each beam size."""
    import pandas as pd

    from ..train import predict
    rows = []
    for beam in beams:
        run.task.beam_size = beam
        outputs = predict(run.model, run.task.predict_step, run.batches("test"), bf16=run.cfg.bf16)
        rows.append({"beam": beam, **run.task.evaluate(outputs, run.splits["test"])})
    return pd.DataFrame(rows).set_index("beam")


def decoded_titles(run, outputs, count: int) -> list[str]:
    """For the first ``count`` test images: the decoded labels in emission order, then the truth."""
    classes, truth = run.classes, run.splits["test"].labels
    titles = []
    for i in range(count):
        decoded = [classes[k] for k in outputs["sequence"][i].tolist() if 0 <= k < len(classes)]
        true = [classes[k] for k in (truth[i] == 1).nonzero().flatten().tolist()]
        titles.append(f"decoded: {', '.join(decoded) or '-'}\ntrue: {', '.join(true)}")
    return titles
