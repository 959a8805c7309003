"""P1's CNN-RNN decoder (Wang et al., CVPR 2016): an LSTM that emits an image's labels one
at a time in a joint image/label embedding space, trained by teacher forcing on label
sequences and decoded by beam search.

The decoder is a head on a pooled CNN feature ``I`` (``B x D``); :class:`CNNRNN` puts it on a
timm backbone.
Token ids: ``0 .. C-1`` the labels, ``C`` END; :data:`PAD` (-1) pads a sequence after END.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .base import ImageModel

PAD = -1
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh,
                                           "identity": nn.Identity}
ORDERS = ("frequency", "rare", "random")

State = tuple[torch.Tensor, ...]


class BeamResult(NamedTuple):
    """What :meth:`CNNRNNDecoder.decode` returns for ``B`` images."""

    labels: torch.Tensor  # B x C bool: the best candidate's label set
    sequences: torch.Tensor  # B x max_length int64: its labels in emission order, PAD after
    scores: torch.Tensor  # B x C: per-label scores for ranking metrics (mAP)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class CNNRNNDecoder(nn.Module):
    """P1's recurrent label decoder over a pooled image feature ``I``.

    - label embedding ``w_k = U_l e_k``: ``U_l`` is ``label_embedding``, ``(C+1) x embed_dim``
      (one row per label and one for END); a separate learned vector starts every sequence.
    - ``o(t), r(t) = LSTM(w(t-1), r(t-1))``, ``w(-1)`` the START vector.
    - ``x_t = h(U_o o(t) + U_I I + b)``, ``x_t`` in the embedding space.
    - ``s(t) = U_l^T x_t``: scores over the C labels and END with the SAME ``U_l`` as the
      input embedding (one parameter, gradients from both uses add up).

    Assumed (docs/PAPERS.md, P1): ``embed_dim=64``, ``hidden_dim=512``; ``activation`` is ``h``
    (P1's ReLU; "tanh" or "identity" as options); ``projection_bias`` adds ``b``, which P1's
    formula leaves out.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, embed_dim: int = 64,
                 hidden_dim: int = 512, activation: str = "relu", projection_bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        self.num_classes = _positive_int("num_classes", num_classes)
        _positive_int("embed_dim", embed_dim)
        _positive_int("hidden_dim", hidden_dim)
        self.end = num_classes
        self.start_token = num_classes + 1  # an input-only token: no score is ever given to it
        # Unit-norm-ish rows keep the initial scores s(t) = U_l^T x_t of order one.
        self.label_embedding = nn.Parameter(torch.randn(num_classes + 1, embed_dim)
                                            * embed_dim ** -0.5)
        self.start = nn.Parameter(torch.randn(embed_dim) * embed_dim ** -0.5)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.proj_rnn = nn.Linear(hidden_dim, embed_dim, bias=False)  # U_o
        self.proj_image = nn.Linear(feature_dim, embed_dim, bias=projection_bias)  # U_I, b
        self.activation = ACTIVATIONS[activation]()

    def _check_features(self, image_features: torch.Tensor) -> None:
        if image_features.ndim != 2 or image_features.shape[1] != self.feature_dim:
            raise ValueError(f"image_features must be B x {self.feature_dim}, "
                             f"got shape {tuple(image_features.shape)}")

    def _input_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """``w`` of label/END tokens, the START vector for :attr:`start_token`."""
        table = torch.cat([self.label_embedding, self.start[None]])
        return table[tokens]

    def _scores(self, rnn_output: torch.Tensor, image_term: torch.Tensor) -> torch.Tensor:
        """``s = U_l^T h(U_o o + U_I I + b)``; ``image_term`` is ``U_I I + b``."""
        x = self.activation(self.proj_rnn(rnn_output) + image_term)
        return x @ self.label_embedding.T

    def forward(self, image_features: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits ``B x T x (C+1)``, step ``t`` predicting ``sequence[:, t]``
        from ``sequence[:, :t]`` (``sequence``: ``B x T`` int64 labels, END, then PAD)."""
        self._check_features(image_features)
        if (sequence.ndim != 2 or sequence.shape[0] != image_features.shape[0]
                or sequence.dtype != torch.int64):
            raise ValueError(f"sequence must be int64 of shape ({image_features.shape[0]}, T), "
                             f"got {sequence.dtype} of shape {tuple(sequence.shape)}")
        if sequence.numel() and not ((sequence >= PAD) & (sequence <= self.end)).all():
            raise ValueError(f"sequence values must lie in [{PAD}, {self.end}], got "
                             f"[{int(sequence.min())}, {int(sequence.max())}]")
        start = torch.full_like(sequence[:, :1], self.start_token)
        # END and PAD are only ever inputs to steps whose targets are PAD: any row serves.
        previous = torch.cat([start, sequence[:, :-1].clamp(min=0)], dim=1)
        output, _ = self.lstm(self._input_embedding(previous))
        return self._scores(output, self.proj_image(image_features)[:, None])

    @staticmethod
    def sequence_loss(step_logits: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """Mean over non-PAD steps of ``-log softmax(s(t))[sequence[:, t]]``."""
        return F.cross_entropy(step_logits.flatten(0, 1), sequence.flatten(), ignore_index=PAD)

    def _initial_state(self, size: int, device: torch.device) -> State:
        """The LSTM's ``(h, c)`` for ``size`` paths, each ``size x hidden``."""
        zeros = torch.zeros(size, self.lstm.hidden_size, device=device,
                            dtype=self.label_embedding.dtype)
        return zeros, zeros

    def _step(self, previous: torch.Tensor, state: State,
              image_term: torch.Tensor) -> tuple[torch.Tensor, State]:
        """One decoding step for ``M`` paths: the logits ``M x (C+1)`` of the next token given
        the previous one (``M``) and the state. Every tensor of ``state`` has the paths on
        dim 0, so that the search can reorder them without knowing what they hold."""
        h, c = state
        output, (h, c) = self.lstm(self._input_embedding(previous)[:, None], (h[None], c[None]))
        return self._scores(output[:, 0], image_term), (h[0], c[0])

    @torch.no_grad()
    def decode(self, image_features: torch.Tensor, beam_size: int = 3,
               max_length: int | None = None) -> BeamResult:
        """P1's beam search, batched over images and beams.

        With ``N = beam_size`` (3, assumed): at each step every open path is extended by its
        top-N tokens (labels it has not emitted, and END) by the log-probability
        ``log softmax(s(t))``; extensions ending in END join the image's candidate set, and the
        N most probable of the others stay open. Emitted labels are masked out of the
        extension, not renormalised away, so a path's score is exactly the teacher-forced
        log-likelihood :meth:`forward` gives its sequence. An image stops once it has a
        candidate and every path kept open is strictly less probable than every candidate
        (below the worst one); paths still open after ``max_length`` labels (default C) are
        closed as candidates with their score so far (no END term). The answer is the most
        probable candidate. ``beam_size=1`` is greedy decoding.

        ``scores[b, c]`` is ``max_t softmax(s(t))_c`` over the steps of the answer's path: the
        distributions the decoder produced along it (also after it emitted ``c``, and for
        labels it never emitted), including the step that emitted END.
        """
        self._check_features(image_features)
        beams = _positive_int("beam_size", beam_size)
        num_classes = self.num_classes
        max_length = num_classes if max_length is None else max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not (
                1 <= max_length <= num_classes):
            raise ValueError(f"max_length must be an int in [1, {num_classes}], "
                             f"got {max_length!r}")
        batch, device = image_features.shape[0], image_features.device
        rows = torch.arange(batch, device=device)[:, None]
        width = min(beams, num_classes + 1)  # top-N per path: there are only C+1 tokens
        neg_inf = float("-inf")

        image_term = self.proj_image(image_features).repeat_interleave(beams, dim=0)
        state = self._initial_state(batch * beams, device)
        tokens = torch.full((batch, beams), self.start_token, dtype=torch.long, device=device)
        # One path at first: the other beams start at -inf so they are never chosen.
        score = torch.full((batch, beams), neg_inf, dtype=image_term.dtype, device=device)
        score[:, 0] = 0
        emitted = torch.zeros(batch, beams, num_classes + 1, dtype=torch.bool, device=device)
        paths = torch.full((batch, beams, max_length), PAD, dtype=torch.long, device=device)
        peak = torch.zeros(batch, beams, num_classes, dtype=score.dtype, device=device)
        best_score = torch.full((batch,), neg_inf, dtype=score.dtype, device=device)
        best_path = torch.full((batch, max_length), PAD, dtype=torch.long, device=device)
        best_peak = torch.zeros(batch, num_classes, dtype=score.dtype, device=device)
        worst_candidate = torch.full((batch,), float("inf"), dtype=score.dtype, device=device)

        def offer(candidate: torch.Tensor, cand_paths: torch.Tensor, cand_peak: torch.Tensor):
            """Adds ``B x N`` candidates (-inf: none) to each image's candidate set."""
            nonlocal best_score, best_path, best_peak, worst_candidate
            top, beam = candidate.max(dim=1)
            better = top > best_score
            best_score = torch.where(better, top, best_score)
            best_path = torch.where(better[:, None], cand_paths[rows[:, 0], beam], best_path)
            best_peak = torch.where(better[:, None], cand_peak[rows[:, 0], beam], best_peak)
            real = candidate.masked_fill(candidate == neg_inf, float("inf"))
            worst_candidate = torch.minimum(worst_candidate, real.amin(dim=1))

        for t in range(max_length):
            logits, state = self._step(tokens.flatten(), state, image_term)
            log_prob = logits.log_softmax(dim=-1).view(batch, beams, num_classes + 1)
            step_peak = torch.maximum(peak, log_prob[..., :num_classes].exp())
            total, token = (score[..., None] + log_prob.masked_fill(emitted, neg_inf)).topk(width)
            ends = token == self.end
            # A path's top-N holds END at most once.
            offer(total.masked_fill(~ends, neg_inf).amax(dim=-1), paths, step_peak)

            score, pick = total.masked_fill(ends, neg_inf).flatten(1).topk(beams)
            parent = pick // width
            # Dead paths (-inf) may carry any token: they can never become candidates.
            tokens = token.flatten(1).gather(1, pick)
            flat_parent = (rows * beams + parent).flatten()
            state = tuple(s[flat_parent] for s in state)
            emitted = emitted[rows, parent].scatter(-1, tokens[..., None], True)
            paths = paths[rows, parent]
            paths[..., t] = tokens
            peak = step_peak[rows, parent]

            stop = (best_score > neg_inf) & (score < worst_candidate[:, None]).all(dim=1)
            score = score.masked_fill(stop[:, None], neg_inf)
            if not (score > neg_inf).any():
                break
        offer(score, paths, peak)  # still open at max_length: closed as if END

        labels = torch.zeros(batch, num_classes + 1, dtype=torch.bool, device=device)
        labels.scatter_(1, best_path.masked_fill(best_path == PAD, self.end), True)
        return BeamResult(labels[:, :num_classes], best_path, best_peak)


def label_sequences(labels: torch.Tensor, order: str = "frequency",
                    frequencies: torch.Tensor | Sequence[float] | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Teacher-forcing targets: ``N x L`` int64, each image's positive labels in ``order``,
    then END (``C``), then PAD, with ``L = 1 +`` the most positives of any image.

    ``labels`` is ``N x C``, 1 positive, 0 negative, -1 unknown (skipped like negatives).
    Orders: "frequency" (P1's: most frequent first by ``frequencies``, ties by label index),
    "rare" (least frequent first, ties by index), "random" (one permutation of the C labels
    drawn from ``seed``, the same for every image). ``frequencies`` (length C) defaults to the
    positives of ``labels``; pass the training split's counts for other splits.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be N x C, got shape {tuple(labels.shape)}")
    if labels.numel() and not ((labels >= -1) & (labels <= 1)).all():
        raise ValueError(f"labels must hold -1, 0 or 1, got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    num_images, num_classes = labels.shape
    positive = labels == 1
    if frequencies is None:
        frequencies = positive.sum(0)
    frequencies = torch.as_tensor(frequencies, device=labels.device).double()
    if frequencies.shape != (num_classes,):
        raise ValueError(f"frequencies must have length {num_classes}, "
                         f"got shape {tuple(frequencies.shape)}")

    if order == "random":
        generator = torch.Generator().manual_seed(seed)
        ranked = torch.randperm(num_classes, generator=generator).to(labels.device)
    else:
        # A stable sort keeps equal frequencies in label-index order.
        ranked = torch.sort(-frequencies if order == "frequency" else frequencies,
                            stable=True).indices
    rank = torch.empty_like(ranked)
    rank[ranked] = torch.arange(num_classes, device=labels.device)

    # Positives first, by rank; everything else after them.
    key = torch.where(positive, rank, rank + num_classes)
    by_key = key.argsort(dim=1)
    count = positive.sum(1)
    length = 1 + int(count.max()) if num_images else 1
    sequence = torch.where(positive.gather(1, by_key), by_key, PAD)[:, :length - 1]
    sequence = torch.cat([sequence, sequence.new_full((num_images, 1), PAD)], dim=1)
    sequence[torch.arange(num_images, device=labels.device), count] = num_classes
    return sequence


class CNNRNN(ImageModel):
    """P1's model: a timm CNN, its pooled feature ``I`` read by a :class:`CNNRNNDecoder`.

    ``forward(x, sequence)`` gives the teacher-forced step logits (training calls the model
    only through it); ``decode(x, beam_size, max_length)`` the beam search. The decoder runs
    in fp32 under bf16 autocast, as the multi-label head does.
    """

    def __init__(self, backbone: str, num_classes: int, *, embed_dim: int = 64,
                 hidden_dim: int = 512, activation: str = "relu", **kwargs):
        super().__init__(backbone, **kwargs)
        self.head = CNNRNNDecoder(self.num_features, num_classes, embed_dim=embed_dim,
                                  hidden_dim=hidden_dim, activation=activation)

    def forward(self, x: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(pooled, sequence)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, beam_size: int = 3,
               max_length: int | None = None) -> BeamResult:
        pooled = self.embed(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head.decode(pooled, beam_size=beam_size, max_length=max_length)
