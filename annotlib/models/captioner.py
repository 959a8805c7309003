"""P4's caption decoder: a Show, Attend and Tell (Xu et al., ICML 2015) attention LSTM over a
CNN's last spatial feature map, trained by teacher forcing and decoded by batched beam search.

The decoder is a head on the feature map ``F`` (``B x D x H x W``); it does not own the CNN.
Grid cells are flattened row-major, so attention index ``i = row * W + col`` matches
``F.flatten(2)`` and ``cam.flatten(1)``.
Token ids: :data:`PAD` (0) pads a caption after <end>; ``start_id`` and ``end_id`` are given to
the constructor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

PAD = 0

State = tuple[torch.Tensor, torch.Tensor]


class Caption(NamedTuple):
    """What :meth:`AttentionCaptioner.decode` returns for ``B`` images."""

    tokens: torch.Tensor  # B x max_length int64: the chosen path, <end> included, PAD after
    attention: torch.Tensor  # B x max_length x (H*W): its attention maps, 0 after <end>
    log_prob: torch.Tensor  # B: its total log-probability (the teacher-forced likelihood)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class AttentionCaptioner(nn.Module):
    """Show-Attend-and-Tell decoder over a spatial feature map.

    With the grid's feature vectors ``f_i`` (``i < H*W``) and the previous hidden state ``h``:

    - attention ``e_i = w^T tanh(W_f f_i + W_h h)``, ``alpha = softmax_i(e)``;
    - context ``z = beta * sum_i alpha_i f_i``, gate ``beta = sigmoid(w_beta^T h + b_beta)``
      (a scalar per image, as in Xu et al. 4.2.1);
    - ``h, c = LSTMCell([E y_prev; z], (h, c))``; logits ``= W_o dropout(h)``;
    - ``h_0 = W_init_h mean_i f_i``, ``c_0 = W_init_c mean_i f_i`` (one linear layer each,
      where Xu et al. write "an MLP").

    Assumed (P4 gives no hyper-parameters): ``embed_dim=512``, ``hidden_dim=512``,
    ``attention_dim=512``, ``dropout=0.5``.
    """

    def __init__(self, feature_dim: int, vocab_size: int, *, start_id: int, end_id: int,
                 embed_dim: int = 512, hidden_dim: int = 512, attention_dim: int = 512,
                 dropout: float = 0.5):
        super().__init__()
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
            raise ValueError(f"vocab_size must be an int >= 3 (pad, start, end), "
                             f"got {vocab_size!r}")
        self.vocab_size = vocab_size
        for name, value in (("start_id", start_id), ("end_id", end_id)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < vocab_size:
                raise ValueError(f"{name} must be an int in [1, {vocab_size}), got {value!r}")
        if start_id == end_id:
            raise ValueError(f"start_id and end_id must differ, both are {start_id}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.start_id, self.end_id = start_id, end_id
        _positive_int("embed_dim", embed_dim)
        _positive_int("hidden_dim", hidden_dim)
        _positive_int("attention_dim", attention_dim)

        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.attend_feature = nn.Linear(feature_dim, attention_dim)  # W_f
        self.attend_hidden = nn.Linear(hidden_dim, attention_dim)  # W_h
        self.attend_score = nn.Linear(attention_dim, 1)  # w
        self.gate = nn.Linear(hidden_dim, 1)  # w_beta, b_beta
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)  # W_o

    def _grid(self, features: torch.Tensor) -> torch.Tensor:
        """``B x (H*W) x D``: the feature vectors of the grid, row-major."""
        if features.ndim != 4 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be B x {self.feature_dim} x H x W, "
                             f"got shape {tuple(features.shape)}")
        return features.flatten(2).transpose(1, 2)

    def _initial_state(self, grid: torch.Tensor) -> State:
        mean = grid.mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def _step(self, previous: torch.Tensor, state: State, grid: torch.Tensor,
              keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One step for ``M`` paths: ``(logits M x V, alpha M x N, state)`` given the previous
        tokens (``M``), the state, the grid (``M x N x D``) and its keys ``W_f f`` (``M x N x A``).
        """
        h, c = state
        energy = self.attend_score(torch.tanh(keys + self.attend_hidden(h)[:, None])).squeeze(-1)
        alpha = energy.softmax(dim=-1)
        context = torch.sigmoid(self.gate(h)) * torch.einsum("mn,mnd->md", alpha, grid)
        h, c = self.lstm(torch.cat([self.embedding(previous), context], dim=-1), (h, c))
        return self.output(self.dropout(h)), alpha, (h, c)

    def forward(self, features: torch.Tensor,
                tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing on ``tokens`` (``B x L`` int64, <start> first, PAD after <end>):
        ``(logits B x (L-1) x V, attention B x (L-1) x (H*W))``, step ``t`` predicting
        ``tokens[:, t + 1]`` from ``tokens[:, :t + 1]``; each attention row sums to 1."""
        grid = self._grid(features)
        if (tokens.ndim != 2 or tokens.shape[0] != grid.shape[0] or tokens.shape[1] < 2
                or tokens.dtype != torch.int64):
            raise ValueError(f"tokens must be int64 of shape ({grid.shape[0]}, L >= 2), "
                             f"got {tokens.dtype} of shape {tuple(tokens.shape)}")
        if not (tokens[:, 0] == self.start_id).all():
            raise ValueError(f"tokens must begin with start_id={self.start_id}")
        if not ((tokens >= 0) & (tokens < self.vocab_size)).all():
            raise ValueError(f"tokens must lie in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        keys = self.attend_feature(grid)
        state = self._initial_state(grid)
        logits, attention = [], []
        for t in range(tokens.shape[1] - 1):
            step_logits, alpha, state = self._step(tokens[:, t], state, grid, keys)
            logits.append(step_logits)
            attention.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(attention, dim=1)

    @staticmethod
    def caption_loss(logits: torch.Tensor, tokens: torch.Tensor, attention: torch.Tensor,
                     alpha_c: float = 1.0) -> torch.Tensor:
        """``CE + alpha_c * mean_{b,i} (1 - sum_t alpha_bti)^2``, in at least float32.

        ``CE`` is the mean over non-PAD targets ``tokens[:, 1:]`` of ``-log softmax(logits)``;
        the doubly stochastic regulariser (Xu et al. 4.2.1) sums each image's attention over
        its non-PAD steps and averages over images and grid cells. ``alpha_c=1.0`` as in Xu et
        al.'s code. Captions with no non-PAD target add nothing to CE (0 if there is none).
        """
        if tokens.ndim != 2 or logits.shape[:2] != (tokens.shape[0], tokens.shape[1] - 1):
            raise ValueError(f"logits must be B x (L-1) x V for tokens B x L, got logits "
                             f"{tuple(logits.shape)} and tokens {tuple(tokens.shape)}")
        if attention.ndim != 3 or attention.shape[:2] != logits.shape[:2]:
            raise ValueError(f"attention must be {tuple(logits.shape[:2])} x (H*W), "
                             f"got shape {tuple(attention.shape)}")
        if alpha_c < 0:
            raise ValueError(f"alpha_c must be >= 0, got {alpha_c!r}")
        dtype = torch.promote_types(logits.dtype, torch.float32)
        targets = tokens[:, 1:]
        step = targets != PAD
        cross_entropy = F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.flatten(),
                                        ignore_index=PAD, reduction="sum")
        cross_entropy = cross_entropy / step.sum().clamp(min=1)
        coverage = (attention.to(dtype) * step[..., None]).sum(dim=1)
        return cross_entropy + alpha_c * (1.0 - coverage).square().mean()

    @torch.no_grad()
    def decode(self, features: torch.Tensor, beam_size: int = 3, max_length: int = 20) -> Caption:
        """Show-Attend-and-Tell beam search, batched over images and beams.

        Each image keeps ``beam_size`` paths (3, assumed), starting from <start>. At each step
        every open path is extended by every token except PAD and <start>, scored by its
        total log-probability ``sum_t log softmax(logits_t)[y_t]`` (over the full vocabulary,
        so a score is exactly the likelihood :meth:`forward` gives the path), and the
        ``beam_size`` best extensions are kept. Those ending in <end> are finished and leave
        the beam, which narrows by as many (the usual Show-Attend-and-Tell search). The search
        ends when no path is open or after ``max_length`` tokens (<end> counted). The answer is
        the finished path of highest total log-probability (no length normalisation), or the
        best open path at ``max_length`` if none finished. ``beam_size=1`` is greedy decoding.

        Dropout follows the module's mode: call ``eval()`` first for a deterministic search.
        """
        beams = _positive_int("beam_size", beam_size)
        length = _positive_int("max_length", max_length)
        grid = self._grid(features)
        batch, cells = grid.shape[:2]
        vocab, device = self.vocab_size, grid.device
        rows = torch.arange(batch, device=device)[:, None]
        neg_inf = float("-inf")

        grid = grid.repeat_interleave(beams, dim=0)
        keys = self.attend_feature(grid)
        state = self._initial_state(grid)
        tokens = torch.full((batch * beams,), self.start_id, dtype=torch.long, device=device)
        # One path at first: the other beams start at -inf so that they are never extended.
        score = torch.full((batch, beams), neg_inf, device=device)
        score[:, 0] = 0.0
        paths = torch.full((batch, beams, length), PAD, dtype=torch.long, device=device)
        maps = torch.zeros(batch, beams, length, cells, device=device)
        best_score = torch.full((batch,), neg_inf, device=device)
        best_path = torch.full((batch, length), PAD, dtype=torch.long, device=device)
        best_maps = torch.zeros(batch, length, cells, device=device)
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[[PAD, self.start_id]] = True  # never targets, so their logits are untrained

        for t in range(length):
            logits, alpha, state = self._step(tokens, state, grid, keys)
            log_prob = logits.float().log_softmax(dim=-1).masked_fill(banned, neg_inf)
            total = score[..., None] + log_prob.view(batch, beams, vocab)
            score, pick = total.flatten(1).topk(beams, dim=1)
            parent, token = pick // vocab, pick % vocab
            paths = paths[rows, parent]
            paths[..., t] = token
            maps = maps[rows, parent]
            maps[..., t, :] = alpha.view(batch, beams, cells)[rows, parent].float()
            flat_parent = (rows * beams + parent).flatten()
            state = (state[0][flat_parent], state[1][flat_parent])
            tokens = token.flatten()

            ended = (token == self.end_id) & (score > neg_inf)
            top, beam = score.masked_fill(~ended, neg_inf).max(dim=1)
            better = top > best_score
            best_score = torch.where(better, top, best_score)
            best_path = torch.where(better[:, None], paths[rows[:, 0], beam], best_path)
            best_maps = torch.where(better[:, None, None], maps[rows[:, 0], beam], best_maps)
            score = score.masked_fill(ended, neg_inf)  # finished paths leave the beam
            if not (score > neg_inf).any():
                break

        # An image with no finished path still has open ones: the loop ran all max_length steps.
        top, beam = score.max(dim=1)
        none = best_score == neg_inf
        best_score = torch.where(none, top, best_score)
        best_path = torch.where(none[:, None], paths[rows[:, 0], beam], best_path)
        best_maps = torch.where(none[:, None, None], maps[rows[:, 0], beam], best_maps)
        return Caption(best_path, best_maps, best_score)
