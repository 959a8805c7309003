"""Captioning metrics of the COCO caption evaluation, computed by pycocoevalcap's own scorers.

:func:`caption_metrics` reports BLEU-1..4 (``Bleu(4)``, corpus-level, "closest" reference
length), METEOR (``Meteor``, METEOR 1.5), ROUGE-L (``Rouge``, beta 1.2) and CIDEr-D (``Cider``:
pycocoevalcap's CIDEr is the CIDEr-D variant, with clipped n-gram counts, a Gaussian length
penalty (sigma 6) and the x10 scale, its document frequencies taken from the references
scored), on captions tokenised as the COCO evaluation does.

Two parts need Java: the Stanford PTBTokenizer and METEOR. Without Java, or when either
fails, the result says so instead of guessing a number:

- tokenisation falls back to :func:`annotlib.data.captions.tokenize` (lower-case, punctuation
  replaced by spaces); ``result["tokenizer"]`` is ``"PTBTokenizer"`` or ``"fallback"``, and
  ``result["tokenizer_note"]`` gives the reason. The fallback splits "man's" into "man s"
  where PTB gives "man 's", so scores can differ slightly from the official ones.
- ``result["METEOR"]`` is ``None`` and ``result["METEOR_missing"]`` gives the reason.

The METEOR jar takes seconds to start (it loads its paraphrase table), so one process is
started on first use and kept for the life of the Python process.
"""

from __future__ import annotations

import shutil
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ..data.captions import tokenize

Captions = dict[Hashable, list[str]]


def _keyed(candidates: Mapping[Hashable, str] | Sequence[str],
           references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]]
           ) -> tuple[Captions, Captions]:
    """(references, candidates) as pycocoevalcap's ``{id: [sentences]}``; a sequence is keyed
    by position, so a dict of candidates pairs with a list of references by index."""
    res = dict(candidates) if isinstance(candidates, Mapping) else dict(enumerate(candidates))
    gts = dict(references) if isinstance(references, Mapping) else dict(enumerate(references))
    if res.keys() != gts.keys():
        missing = [k for k in gts if k not in res][:3]
        extra = [k for k in res if k not in gts][:3]
        raise ValueError(f"candidates and references must have the same ids "
                         f"(no candidate for {missing}, no references for {extra})")
    if not res:
        raise ValueError("no captions to score")
    for key in res:
        refs = gts[key]
        if not isinstance(res[key], str):
            raise TypeError(f"candidate {key!r} must be one string")
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references of {key!r} must be a list of strings")
        if not refs:
            raise ValueError(f"image {key!r} has no reference caption")
    return {k: list(gts[k]) for k in res}, {k: [res[k]] for k in res}


def _ptb_tokenize(gts: Captions, res: Captions) -> tuple[Captions, Captions]:
    """Both sides through one PTBTokenizer run (it tokenises line by line, so one run gives
    what two would, with one Java start fewer); a lost line is an error."""
    both = {("ref", k): [{"caption": c} for c in v] for k, v in gts.items()}
    both.update({("cand", k): [{"caption": c} for c in v] for k, v in res.items()})
    out = PTBTokenizer().tokenize(both)
    if out.keys() != both.keys() or any(len(out[k]) != len(both[k]) for k in both):
        raise RuntimeError("PTBTokenizer returned fewer lines than it was given")
    return ({k: out["ref", k] for k in gts}, {k: out["cand", k] for k in res})


@lru_cache(maxsize=1)
def _meteor_scorer() -> Meteor:
    return Meteor()


def _meteor(gts: Captions, res: Captions) -> tuple[float | None, str | None]:
    """(METEOR, None), or (None, why it could not be computed)."""
    try:
        scorer = _meteor_scorer()
    except OSError as err:
        return None, f"METEOR could not start: {err}"
    try:
        return float(scorer.compute_score(gts, res)[0]), None
    except (OSError, ValueError) as err:
        # compute_score fails holding the scorer's lock, and Meteor.__del__ takes that lock:
        # release it before dropping the broken process, or its clean-up would hang.
        if scorer.lock.locked():
            scorer.lock.release()
        _meteor_scorer.cache_clear()
        return None, f"METEOR failed: {err}"


def caption_metrics(candidates: Mapping[Hashable, str] | Sequence[str],
                    references: Mapping[Hashable, Sequence[str]] | Sequence[Sequence[str]],
                    *, meteor: bool = True) -> dict[str, float | str | None]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of one candidate caption per image against that
    image's reference captions (see the module docstring).

    ``candidates`` is a list (aligned with ``references``) or a dict ``{id: caption}``;
    ``references`` a list of lists or a dict ``{id: [captions]}`` with the same ids.
    ``meteor=False`` skips METEOR (``None``, reason "not requested").
    Keys: ``BLEU-1`` .. ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr-D``, ``tokenizer``, and
    ``tokenizer_note`` / ``METEOR_missing`` where those parts did not run.
    """
    gts, res = _keyed(candidates, references)
    java = shutil.which("java") is not None
    result: dict[str, float | str | None] = {"tokenizer": "PTBTokenizer"}
    try:
        if not java:
            raise RuntimeError("java not found")
        gts, res = _ptb_tokenize(gts, res)
    except (OSError, RuntimeError) as err:
        result.update(tokenizer="fallback", tokenizer_note=f"PTBTokenizer did not run ({err}); "
                      f"captions lower-cased, punctuation replaced by spaces")
        gts = {k: [" ".join(tokenize(c)) for c in v] for k, v in gts.items()}
        res = {k: [" ".join(tokenize(c)) for c in v] for k, v in res.items()}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result.update({f"BLEU-{n}": float(score) for n, score in enumerate(bleu, 1)})
    if not meteor:
        score, missing = None, "not requested"
    elif not java:
        score, missing = None, "java not found"
    else:
        score, missing = _meteor(gts, res)
    result["METEOR"] = score
    if missing is not None:
        result["METEOR_missing"] = missing
    result["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    result["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    return result
