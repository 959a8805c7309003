"""Joint classification and captioning (P4, Yoon et al. 2020): a GAP + linear classifier and
an attention caption decoder on one CNN feature map, trained with
``lambda_cls L_cls + lambda_cap L_cap + lambda_dis L_dis`` (:class:`JointCaptionLoss`), where
``L_dis`` pulls the decoder's attention and the true class's CAM together."""

from __future__ import annotations

import json
import math

import torch
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from torch.nn import functional as F

from ..data import Split
from ..data.captions import CONCEPT_STOPWORDS, MIN_WORD_COUNT, CaptionVocabulary, tokenize
from ..losses.bce import bce_loss
from ..losses.disagreement import (
    JointCaptionLoss,
    disagreement_loss,
    mean_class_map,
    step_attention,
)
from ..metrics import annotation_metrics, mean_average_precision
from ..metrics.captioning import caption_metrics
from ..metrics.classification import accuracy
from ..metrics.localisation import energy_in_box, pointing_game
from ..models.captioner import PAD, AttentionCaptioner
from ..stats import image_values, multilabel_outputs
from .base import Task

CLASS_TARGETS = ("auto", "categories", "labels")
DIS_STEPS = ("all", "class_words")
DIS_TARGETS = ("both", "attention", "cam")


def class_words(name: str) -> set[str]:
    """The caption words that name a class: the alphabetic :func:`tokenize` words of its name
    that are not stop words, and their plurals (+s, +es), so that "circle" is found in "two
    circles" and ``001.Black_footed_Albatross`` gives black, footed, albatross."""
    words = {w for w in tokenize(name) if w.isalpha() and w not in CONCEPT_STOPWORDS}
    return words | {w + "s" for w in words} | {w + "es" for w in words}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _unwrap(model):
    """The model under DistributedDataParallel (or torch.compile), for reading its build."""
    for attribute in ("module", "_orig_mod"):
        model = getattr(model, attribute, model)
    return model


class CaptioningTask(Task):
    """P4's task: class targets and captions in training, captions, class scores, attention
    maps and CAMs in prediction.

    - Vocabulary: :meth:`CaptionVocabulary.build` of the TRAINING captions only, words seen at
      least ``min_count`` times (5, as Show-Attend-and-Tell implementations); it is saved with
      the run (``task.json``). Captions are encoded to ``max_caption_length`` tokens (<start>
      and <end> included); each training step teacher-forces one of each image's captions,
      drawn at random.
    - Class targets (``class_targets``): "categories" (one class per image: cross-entropy,
      accuracy), "labels" (the multi-hot ``labels``, e.g. Flickr8k concepts: BCE with unknown
      labels ignored, mAP, CF1 and OF1 at 0.5), or "auto": categories where the split's
      ``categories`` are its ``classes`` (CUB, Flowers), else labels (the synthetic set, whose
      categories are emotions while its labels and boxes are objects).
    - Loss: ``loss=joint_caption`` (:class:`JointCaptionLoss`, its ``lambda_cls``,
      ``lambda_cap``, ``lambda_dis`` and divergence options); ``L_cap`` is
      :meth:`AttentionCaptioner.caption_loss` with ``alpha_c`` (the doubly stochastic
      regulariser). ``dis_steps``: "all" (the mean attention over the caption's steps against
      the mean CAM of the image's true classes) or "class_words" (for each true class, the
      mean attention over the steps whose target word names it, :func:`class_words`, against
      its own CAM; pairs without such a step are left out). ``dis_target``: "both" maps get
      L_dis's gradient, or only "attention" (CAM detached) or only the "cam".
    - Prediction: beam search (``beam_size``, ``max_length`` tokens), the predicted class's
      CAM and every class's CAM (from images only; targets pick among them in evaluation). A
      model built without captioner (``head_kwargs={"captioner": false}``) trains and
      predicts classes only; it needs ``lambda_cap=0`` and ``lambda_dis=0``.
    - Evaluation: caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), class metrics, the
      agreement that L_dis optimises, on the decoded captions: their attention and the CAMs of
      the image's true classes, paired as in training (``agreement_kl``: L_dis with the loss's
      options; ``agreement_peak``: the share of pairs whose two maps peak in the same cell;
      ``agreement_kl_uniform``: the same for a uniform attention; :meth:`_agreement`), the
      same against the top predicted class's CAM
      (``agreement_kl_predicted``, ``agreement_peak_predicted``), and, where the split has
      boxes indexing its classes, pointing game and energy-in-box of the CAM and of the pooled
      attention for the query (image, predicted class), skipping images without a box of that
      class (``localisation_queries``: the share of images queried).
    - Selection: val CIDEr-D (with a captioner trained, ``lambda_cap > 0``), else accuracy or
      mAP; :meth:`validation_metrics` scores BLEU-4 and CIDEr-D only, tokenised by
      :func:`tokenize`, without Java (no PTB tokeniser, no METEOR), so that it is cheap every epoch.
    """

    name = "captioning"
    flips = False  # a flipped image's caption would say "left" for right
    selection = ("CIDEr-D", "max")

    def __init__(self, loss, *, min_count: int = MIN_WORD_COUNT, max_caption_length: int = 32,
                 beam_size: int = 3, max_length: int = 20, class_targets: str = "auto",
                 dis_steps: str = "all", dis_target: str = "both", alpha_c: float = 1.0):
        super().__init__(loss)
        if not isinstance(loss, JointCaptionLoss):
            raise ValueError(  # noqa: TRY004 -- a config error, like every option's
                f"the {self.name} task trains with loss=joint_caption, got {type(loss).__name__}")
        self.min_count = _positive_int("min_count", min_count)
        if _positive_int("max_caption_length", max_caption_length) < 2:
            raise ValueError(f"max_caption_length must be at least 2 (<start>, <end>), got {max_caption_length}")
        self.max_caption_length = max_caption_length
        self.beam_size = _positive_int("beam_size", beam_size)
        self.max_length = _positive_int("max_length", max_length)
        self.class_targets = _choice("class_targets", class_targets, CLASS_TARGETS)
        self.dis_steps = _choice("dis_steps", dis_steps, DIS_STEPS)
        self.dis_target = _choice("dis_target", dis_target, DIS_TARGETS)
        if not alpha_c >= 0:
            raise ValueError(f"alpha_c must be >= 0, got {alpha_c!r}")
        self.alpha_c = float(alpha_c)
        self.vocabulary: CaptionVocabulary | None = None
        self.classes: list[str] = []
        self.mode: str | None = None  # "categories" or "labels", fixed by setup
        self._word_names: torch.Tensor | None = None
        self._image_sizes: dict[str, tuple[int, int]] = {}
        self.captioning = loss.lambda_cap > 0

    # ------------------------------------------------------------ data

    def setup(self, splits: dict[str, Split], seed: int) -> dict[str, Split]:
        train = splits["train"]
        for split in splits.values():
            captions = split.require("captions", self.name)
            empty = next((i for i, c in enumerate(captions) if not c), None)
            if empty is not None:
                raise ValueError(f"{split.dataset}/{split.split}: image {empty} has no caption")
        if self.class_targets == "auto":
            self.mode = ("categories" if train.category_ids is not None and train.categories == train.classes
                         else "labels")
        else:
            self.mode = self.class_targets
        field = "category_ids" if self.mode == "categories" else "labels"
        for split in splits.values():
            split.require(field, self.name)
        self.classes = list(train.categories if self.mode == "categories" else train.classes)
        if not self.classes:
            raise ValueError(f"{train.dataset}: the {self.name} task needs classes, and the dataset has none "
                             "(for Flickr8k, use flickr8k-concepts)")
        self.vocabulary = CaptionVocabulary.build(train.captions, self.min_count)
        self._word_names = None
        if not self.captioning:
            self.selection = ("accuracy", "max") if self.mode == "categories" else ("mAP", "max")
        return splits

    def model_sizes(self, train: Split) -> dict[str, int]:
        vocabulary = self.vocabulary
        return {"num_classes": len(self.classes), "vocab_size": len(vocabulary),
                "start_id": vocabulary.start_id, "end_id": vocabulary.end_id}

    def targets(self, split: Split) -> torch.Tensor:
        """Class ids (``N``) or the multi-hot labels (``N x C``) of ``split``."""
        return split.category_ids if self.mode == "categories" else split.labels

    def fields(self, split: Split) -> dict[str, torch.Tensor]:
        return {"tokens": self.vocabulary.encode(split.captions, self.max_caption_length),
                "targets": self.targets(split)}

    def word_names(self, device) -> torch.Tensor:
        """``V x C`` bool: word ``v`` names class ``c`` (:func:`class_words`)."""
        if self._word_names is None:
            names = torch.zeros(len(self.vocabulary), len(self.classes), dtype=torch.bool)
            for c, name in enumerate(self.classes):
                ids = [self.vocabulary.index[w] for w in class_words(name) if w in self.vocabulary.index]
                names[ids, c] = True
            self._word_names = names
        return self._word_names.to(device)

    # ------------------------------------------------------------ training

    def _sample_captions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B x L``: one real caption per image of ``B x K x L``, drawn with torch's generator
        (seeded per epoch by the loop, so a resumed run draws the same), padding columns cut."""
        count = (tokens[:, :, 0] == self.vocabulary.start_id).sum(1)
        pick = (torch.rand(len(tokens), device=tokens.device) * count).long().clamp(max=tokens.shape[1] - 1)
        chosen = tokens[torch.arange(len(tokens), device=tokens.device), pick]
        length = int((chosen != PAD).sum(1).max())
        return chosen[:, :max(length, 2)]

    def _class_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mode == "categories":
            return F.cross_entropy(logits.float(), targets)
        return bce_loss(logits.float(), targets.float())

    def training_step(self, model, batch):
        targets = batch["targets"]
        has_captioner = _unwrap(model).captioner is not None
        if not has_captioner:
            if self.loss.lambda_cap > 0 or self.loss.lambda_dis > 0:
                raise ValueError(f"a model without captioner trains with lambda_cap=0 and lambda_dis=0, got "
                                 f"lambda_cap={self.loss.lambda_cap}, lambda_dis={self.loss.lambda_dis}")
            out = model(batch["image"])
            return self.loss.lambda_cls * self._class_loss(out["logits"], targets)
        tokens = self._sample_captions(batch["tokens"])
        if self.dis_steps == "all":
            out = model(batch["image"], tokens=tokens, classes=targets)
        else:
            out = model(batch["image"], tokens=tokens, cams=True)
        attention = out["attention"].flatten(2)  # B x T x N
        caption_loss = AttentionCaptioner.caption_loss(out["caption_logits"], tokens, attention, self.alpha_c)
        maps = out["cam"] if self.dis_steps == "all" else out["cams"]
        pooled, cam = self._agreement_maps(attention, tokens[:, 1:], targets, maps)
        if self.dis_target == "attention":
            cam = cam.detach()
        elif self.dis_target == "cam":
            pooled = pooled.detach()
        return self.loss(self._class_loss(out["logits"], targets), caption_loss, pooled, cam)

    def _positives(self, targets: torch.Tensor) -> torch.Tensor:
        """``B x C`` bool: the image's true classes."""
        if self.mode == "categories":
            return F.one_hot(targets, len(self.classes)).bool()
        return targets > 0

    def _agreement_maps(self, attention, words, targets, maps):
        """The (attention, CAM) pairs that L_dis compares, in training (the teacher-forced steps
        of a reference caption) and in evaluation (the decoded caption's steps) alike.

        ``attention`` ``B x T x N``: step ``t``'s map, attended while emitting ``words[:, t]``
        (``B x T``, <end> included, PAD after); ``targets`` the images' true classes; ``maps``
        the mean CAM of each image's true classes ``B x H x W`` (``dis_steps="all"``) or every
        class's CAM ``B x C x H x W`` ("class_words"). A pair whose attention row is all 0 is
        left out by :func:`disagreement_loss`.
        """
        if self.dis_steps == "all":
            pooled = step_attention(attention, words != PAD)
            # An image without a true class has an all-0 CAM: leave it out rather than pull
            # its attention towards the uniform map.
            pooled = pooled * self._positives(targets).any(1, keepdim=True)
            return pooled, maps
        steps = self.word_names(words.device)[words] & self._positives(targets)[:, None, :]  # B x T x C
        steps = steps.to(attention.dtype)
        pooled = torch.einsum("btc,btn->bcn", steps, attention) / steps.sum(1)[..., None].clamp(min=1)
        return pooled.flatten(0, 1), maps.flatten(0, 1)

    # ------------------------------------------------------------ prediction

    def predict_step(self, model, images):
        # Every class's CAM goes with the captions: evaluation pairs the attention with the
        # true classes' maps, which prediction, seeing images only, cannot pick.
        captioner = _unwrap(model).captioner is not None
        out = model.decode(images, beam_size=self.beam_size, max_length=self.max_length, cams=captioner)
        logits = out["logits"].float()
        scores = logits.softmax(1) if self.mode == "categories" else torch.sigmoid(logits)
        result = {"logits": logits, "scores": scores, "predicted": out["predicted"], "cam": out["cam"].float(),
                  "image_size": torch.full((len(images),), images.shape[-1], device=images.device)}
        if captioner:
            result.update(tokens=out["tokens"], attention=out["attention"].float(), cams=out["cams"].float())
        return result

    def captions(self, outputs) -> list[str]:
        """The decoded captions, as text."""
        return [self.vocabulary.decode(row) for row in outputs["tokens"].cpu()]

    # ------------------------------------------------------------ evaluation

    def _class_metrics(self, outputs, split: Split, full: bool) -> dict[str, float]:
        targets = self.targets(split)
        if self.mode == "categories":
            return {"accuracy": accuracy(outputs["logits"], targets)}
        metrics = {"mAP": mean_average_precision(outputs["scores"], targets)}
        if full:
            at_half = annotation_metrics(outputs["scores"], targets, 0.5)
            metrics.update({f"{k}@0.5": at_half[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1", "N+")})
        return metrics

    @staticmethod
    def pooled_attention(outputs, steps: torch.Tensor | None = None) -> torch.Tensor:
        """``B x H x W``: the mean of the decoded attention maps over the caption's tokens (<end>
        included), or over ``steps`` (``B x T`` bool); all 0 where no step is selected."""
        attention = outputs["attention"]
        if steps is None:
            steps = outputs["tokens"] != PAD
        mean = step_attention(attention.flatten(2), steps.to(attention.device))
        return mean.view(attention.shape[0], *attention.shape[2:])

    def agreement_attention(self, outputs) -> torch.Tensor:
        """The pooled attention that ``agreement_kl_predicted`` compares with the predicted
        class's CAM: over every decoded token, or (``dis_steps="class_words"``) over the tokens
        naming the predicted class."""
        if self.dis_steps == "all":
            return self.pooled_attention(outputs)
        tokens = outputs["tokens"]
        names = self.word_names(tokens.device)[tokens]  # B x T x C
        steps = names.gather(2, outputs["predicted"][:, None, None].expand(-1, tokens.shape[1], 1))[..., 0]
        return self.pooled_attention(outputs, steps)

    def _agreement_scores(self, attention, cam, suffix: str = "") -> dict[str, float]:
        """``agreement_kl``: :func:`disagreement_loss` (the run's options) over the pairs with
        attention; ``agreement_peak``: the share of those pairs whose two maps peak in the
        same cell (the first maximum of each)."""
        attention = attention.flatten(1)
        valid = attention.sum(1) > 0
        if not valid.any():
            return {}
        kl = disagreement_loss(attention, cam, **self.loss.options)
        same = attention.argmax(1) == cam.flatten(1).argmax(1)
        return {f"agreement_kl{suffix}": float(kl), f"agreement_peak{suffix}": float(same[valid].float().mean())}

    def _agreement(self, outputs, split: Split) -> dict[str, float]:
        """What L_dis optimises, on the decoded captions: ``agreement_kl`` and
        ``agreement_peak`` pair the decoded caption's attention with the CAMs of the image's
        true classes exactly as training pairs the teacher-forced attention
        (:meth:`_agreement_maps`: the mean attention over the caption's steps against the mean
        CAM of the true classes, or per true class the steps naming it against its CAM),
        images without a true class left out. ``agreement_kl_uniform``: L_dis of a uniform
        attention against the same CAMs, what their peakiness alone costs (L_dis also flattens
        the CAM it trains, which lowers ``agreement_kl`` without any attention moving; the
        attention follows the CAM where ``agreement_kl`` is below this).
        ``agreement_kl_predicted`` and ``agreement_peak_predicted`` pair it with the top predicted class's CAM (the map the
        notebook draws; what a user sees without labels), which L_dis does not train: with
        multi-hot targets the top class is one of several, or none, of the true ones."""
        targets = self.targets(split)
        cams = outputs["cams"]
        maps = mean_class_map(cams, targets) if self.dis_steps == "all" else cams
        pooled, cam = self._agreement_maps(outputs["attention"].flatten(2), outputs["tokens"], targets, maps)
        metrics = self._agreement_scores(pooled, cam)
        if metrics:
            pooled = pooled.flatten(1)
            kept = (pooled.sum(1, keepdim=True) > 0).float()  # the same pairs, left out alike
            uniform = kept.expand_as(pooled) / pooled.shape[1]
            metrics["agreement_kl_uniform"] = float(disagreement_loss(uniform, cam, **self.loss.options))
        metrics.update(self._agreement_scores(self.agreement_attention(outputs), outputs["cam"], "_predicted"))
        return metrics

    def _original_size(self, path) -> tuple[int, int]:
        key = str(path)
        if key not in self._image_sizes:
            with Image.open(path) as image:  # reads the header only
                self._image_sizes[key] = image.size
        return self._image_sizes[key]

    def scaled_boxes(self, split: Split, size: int) -> list[torch.Tensor]:
        """Each image's boxes ``n x 5`` in pixels of the ``size x size`` image the network saw
        (images are squash-resized, so x and y scale apart)."""
        boxes = []
        for path, image_boxes in zip(split.image_paths, split.boxes):
            width, height = self._original_size(path)
            scale = torch.tensor([1.0, size / width, size / height, size / width, size / height])
            boxes.append(torch.tensor(image_boxes, dtype=torch.float32).view(-1, 5) * scale)
        return boxes

    def _localisation_maps(self, outputs, split: Split) -> tuple[dict[str, torch.Tensor], list, int]:
        """The maps the localisation metrics query (the CAM, the pooled attention), the boxes in
        the network's pixels and its image size; no maps where the split has no boxes."""
        # Boxes index the split's classes; with categories as targets they must be the same list.
        if split.boxes is None or self.classes != split.classes:
            return {}, [], 0
        size = int(outputs["image_size"][0])
        maps = {"cam": outputs["cam"]}
        if "attention" in outputs:
            maps["attention"] = self.pooled_attention(outputs)
        return maps, self.scaled_boxes(split, size), size

    @staticmethod
    def _pointing_hits(maps, predicted, boxes, size) -> dict[str, torch.Tensor]:
        """Per map of :meth:`_localisation_maps`, each image's pointing-game hit (1 / 0, NaN
        where it has no box of the predicted class); nothing where no image is queried."""
        hits = {f"pointing_game_{name}": pointing_game(heat, predicted, boxes, size) for name, heat in maps.items()}
        return hits if hits and (~next(iter(hits.values())).isnan()).any() else {}

    def _localisation(self, outputs, split: Split) -> dict[str, float]:
        maps, boxes, size = self._localisation_maps(outputs, split)
        hits = self._pointing_hits(maps, outputs["predicted"], boxes, size)
        if not hits:
            return {}
        metrics = {name: float(torch.nanmean(value)) for name, value in hits.items()}
        for name, heat in maps.items():
            metrics[f"energy_in_box_{name}"] = float(torch.nanmean(
                energy_in_box(heat, outputs["predicted"], boxes, size)))
        metrics["localisation_queries"] = float((~hits["pointing_game_cam"].isnan()).float().mean())
        return metrics

    def test_outputs(self, outputs, split):
        # The class metrics and the pointing games, per image; caption metrics are corpus-level
        # and L_dis is a mean over pairs, so neither is kept for the bootstrap.
        outputs = self._cpu(outputs)
        if self.mode == "categories":
            kept = image_values(accuracy=(outputs["logits"].argmax(1) == split.category_ids).float())
        else:
            kept = multilabel_outputs(outputs["scores"], split.labels, {"0.5": (outputs["scores"], 0.5)})
        maps, boxes, size = self._localisation_maps(outputs, split)
        return {**kept, **image_values(**self._pointing_hits(maps, outputs["predicted"], boxes, size))}

    @staticmethod
    def _cpu(outputs) -> dict:
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}

    def evaluate(self, outputs, split):
        outputs = self._cpu(outputs)
        metrics = {}
        if "tokens" in outputs:
            scores = caption_metrics(self.captions(outputs), split.captions)
            metrics.update({k: v for k, v in scores.items() if isinstance(v, float)})
        metrics.update(self._class_metrics(outputs, split, full=True))
        if "attention" in outputs:
            metrics.update(self._agreement(outputs, split))
        metrics.update(self._localisation(outputs, split))
        return metrics

    def validation_metrics(self, outputs, split):
        outputs = self._cpu(outputs)
        metrics = self._class_metrics(outputs, split, full=False)
        if "tokens" in outputs:
            metrics.update(fast_caption_scores(self.captions(outputs), split.captions))
        return metrics

    def protocol(self):
        metric, _ = self.selection
        cheap = " (BLEU-4/CIDEr-D only, annotlib tokenisation, no METEOR)" if metric == "CIDEr-D" else ""
        return [f"epoch chosen on val {metric} (highest){cheap}",
                (f"captions decoded by beam search (beam {self.beam_size}, at most {self.max_length} tokens); "
                 f"vocabulary of the training captions (words seen >= {self.min_count} times)"),
                f"class targets: {self.mode}; L_dis over {self.dis_steps} steps, gradient to {self.dis_target}",
                ("attention-CAM agreement of the decoded captions with the true classes' CAMs, paired as L_dis "
                 "pairs them (and with the predicted class's CAM: *_predicted); localisation of the predicted class")]

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"vocabulary": json.loads(self.vocabulary.to_json()), "classes": self.classes,
                "class_targets": self.mode}

    def load_state_dict(self, state: dict) -> None:
        if state.get("classes") != self.classes or state.get("class_targets") != self.mode:
            raise ValueError(f"the saved {self.name} task has other classes or class targets than the data "
                             f"({state.get('class_targets')} vs {self.mode})")
        # The saved vocabulary is the one the weights were trained with, whatever the data gives now.
        self.vocabulary = CaptionVocabulary.from_json(json.dumps(state["vocabulary"]))
        self._word_names = None


def fast_caption_scores(candidates: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU-4 and CIDEr-D by pycocoevalcap's scorers on :func:`tokenize`'d captions: no Java."""
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": float(bleu[3]), "CIDEr-D": float(cider) if math.isfinite(cider) else 0.0}
