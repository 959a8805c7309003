"""Label-sequence decoding (P1, CNN-RNN): an image's label set as a sequence, learnt with
teacher forcing and predicted by beam search."""

from __future__ import annotations

import torch

from ..data import Split
from ..metrics import annotation_metrics, mean_average_precision
from ..models.cnn_rnn import PAD, label_sequences
from ..stats import multilabel_outputs
from .base import Task


class LabelSequenceTask(Task):
    """Each image's positive labels in ``order`` then END, cross-entropy per step (padding
    ignored) with teacher forcing; prediction decodes with ``beam_size`` (1: greedy) up to
    ``max_length`` labels (None: the number of classes).

    The loss is ``cross_entropy`` with ``ignore_index=-1`` (the padding after END).
    ``order``: "frequency" (P1: the training split's most frequent label first), "rare" or
    "random" (one fixed permutation from the run's seed). Unknown labels (-1) are skipped.
    The predicted label set gives CP..OF1 and N+; per-label scores (a label's highest step
    probability along the decoded path) give mAP. ``top_k``: also the metrics of each
    image's k highest-scoring labels, as P1's COCO table (``...@top<k>``).
    """

    name = "label_sequence"

    def __init__(self, loss, *, order: str = "frequency", beam_size: int = 3, max_length: int | None = None,
                 top_k: int | None = None):
        super().__init__(loss)
        if getattr(loss, "ignore_index", None) != PAD:  # the padding after END must add nothing
            raise ValueError(f"the {self.name} task trains with loss=cross_entropy and "
                             f"loss_kwargs={{'ignore_index': {PAD}}}, got {type(loss).__name__}")
        if beam_size < 1 or (max_length is not None and max_length < 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"beam_size, max_length and top_k must be positive, got "
                             f"{beam_size}, {max_length}, {top_k}")
        self.order, self.beam_size, self.max_length, self.top_k = order, beam_size, max_length, top_k
        self.frequencies: torch.Tensor | None = None

    def setup(self, splits: dict[str, Split], seed: int) -> dict[str, Split]:
        for split in splits.values():
            split.require("labels", self.name)
        self.frequencies = (splits["train"].labels == 1).sum(0)
        self.seed = seed
        return splits

    def fields(self, split: Split) -> dict[str, torch.Tensor]:
        return {"sequence": label_sequences(split.labels, self.order, self.frequencies, self.seed)}

    def training_step(self, model, batch):
        logits = model(batch["image"], sequence=batch["sequence"])
        return self.loss(logits.flatten(0, 1).float(), batch["sequence"].flatten())

    def predict_step(self, model, images):
        result = model.decode(images, beam_size=self.beam_size, max_length=self.max_length)
        return {"labels": result.labels.float(), "scores": result.scores.float(), "sequence": result.sequences}

    def evaluate(self, outputs, split):
        targets = split.labels.to(outputs["scores"].device)
        metrics = {"mAP": mean_average_precision(outputs["scores"], targets),
                   **{f"{k}@decoded": v for k, v in annotation_metrics(outputs["labels"], targets, 0.5).items()}}
        if self.top_k:
            top = outputs["scores"].topk(self.top_k, dim=1).indices
            chosen = torch.zeros_like(outputs["scores"]).scatter_(1, top, 1.0)
            metrics.update({f"{k}@top{self.top_k}": v for k, v in annotation_metrics(chosen, targets, 0.5).items()})
        return metrics

    def test_outputs(self, outputs, split):
        return multilabel_outputs(outputs["scores"], split.labels, {"decoded": (outputs["labels"], 0.5)})

    def protocol(self):
        return [*super().protocol(), (f"labels decoded by beam search (beam {self.beam_size}), "
                                      f"{self.order} order; mAP from each label's highest step probability")]
