"""Single-label classification with a metric embedding (P2): a softmax classifier and an
embedding trained together, evaluated by accuracy and by retrieval over the test split."""

from __future__ import annotations

import torch

from ..data import Split
from ..data.emotions import EMOTIONS, category_polarity, graded_relevance
from ..data.samplers import MPerClass
from ..losses.sentiment import SentimentLoss
from ..metrics.classification import accuracy, polarity_accuracy
from ..metrics.retrieval import retrieval_metrics, retrieval_scores
from ..stats import image_values
from .base import Task


class MetricLearningTask(Task):
    """The model returns ``{"logits": B x K, "embedding": B x D}`` for one category per image.

    The loss is :class:`~annotlib.losses.sentiment.SentimentLoss` (called with the logits,
    the embedding and the ids: softmax plus sentiment constraints or a triplet loss), or any
    loss on ``(logits, category_ids)`` such as ``cross_entropy``. Batches hold every category
    with at least ``m`` images (P2: 8); ``m=0`` shuffles instead.

    Metrics: ``accuracy``; for emotion categories (names among the eight Mikels emotions)
    ``polarity_accuracy``; retrieval with every image of the split as a query against the
    rest, ranked by embedding distance: ``mAP``, ``P@K`` for ``ks`` and ``nDCG`` (graded by
    the wheel's polarity for emotions: same emotion 2, same polarity 1, other 0; binary
    otherwise); a split of N images reports only the K < N. The epoch is chosen on val accuracy.
    """

    name = "metric_learning"
    selection = ("accuracy", "max")

    def __init__(self, loss, *, m: int = 8, ks: tuple[int, ...] | list[int] = (5, 10, 20)):
        super().__init__(loss)
        if m < 0:
            raise ValueError(f"m must be >= 0 (0: shuffled batches), got {m}")
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive ranks, got {ks}")
        self.m, self.ks = m, tuple(ks)
        self.categories: list[str] = []

    @property
    def emotions(self) -> bool:
        return all(name in EMOTIONS for name in self.categories)

    def setup(self, splits: dict[str, Split], seed: int) -> dict[str, Split]:
        for split in splits.values():
            split.require("category_ids", self.name)
        self.categories = list(splits["train"].categories)
        if isinstance(self.loss, SentimentLoss):
            self.loss.set_categories(self.categories)
        return splits

    def model_sizes(self, train: Split) -> dict[str, int]:
        return {"num_classes": len(train.categories)}

    def fields(self, split: Split) -> dict[str, torch.Tensor]:
        return {"category_ids": split.category_ids}

    def sampler(self, split: Split, batch_size: int):
        return MPerClass(split.category_ids, self.m, batch_size) if self.m else None

    def training_step(self, model, batch):
        out = model(batch["image"])
        if isinstance(self.loss, SentimentLoss):
            return self.loss(out["logits"], out["embedding"], batch["category_ids"])
        return self.loss(out["logits"].float(), batch["category_ids"])

    def predict_step(self, model, images):
        out = model(images)
        return {"logits": out["logits"].float(), "embedding": out["embedding"].float()}

    def evaluate(self, outputs, split):
        logits, embedding = outputs["logits"], outputs["embedding"]
        ids = split.category_ids.to(logits.device)
        metrics = {"accuracy": accuracy(logits, ids)}
        gains = None
        if self.emotions:
            metrics["polarity_accuracy"] = polarity_accuracy(logits, ids, category_polarity(self.categories))
            gains = graded_relevance(self.categories).to(embedding.device)
        # P@K needs K other items: a split too small for one (a tiny val) leaves that K out
        retrieval = retrieval_metrics(embedding, ids, gains, [k for k in self.ks if k < len(ids)] or [len(ids) - 1])
        del retrieval["queries"]  # a count, not a score
        return {**metrics, **retrieval}

    def test_outputs(self, outputs, split):
        # Per image: whether its class is right, and its AP as a query (NaN: nothing relevant);
        # a resample draws queries, each still ranking the whole test split.
        logits, embedding = outputs["logits"], outputs["embedding"]
        ids = split.category_ids.to(logits.device)
        gains = graded_relevance(self.categories).to(embedding.device) if self.emotions else None
        per_query = retrieval_scores(embedding, ids, gains, [1])
        return image_values(accuracy=(logits.argmax(1) == ids).float(), mAP=per_query["AP"])

    def protocol(self):
        order = f"batches of every category, >= {self.m} images each" if self.m else "shuffled batches"
        return [*super().protocol(), order,
                "retrieval: every image of the split queries the rest, by squared distance of the embedding"]

    def state_dict(self):
        return {"categories": self.categories}

    def load_state_dict(self, state):
        if state["categories"] != self.categories:
            raise ValueError(f"saved categories {state['categories']} differ from the data's {self.categories}")
