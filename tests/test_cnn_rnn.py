"""P1's CNN-RNN decoder against references built from teacher forcing alone: exhaustive
enumeration, a one-image list-based beam search, a hand-written greedy loop, and step
distributions given by hand."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from annotlib.models.cnn_rnn import PAD, CNNRNNDecoder, label_sequences


def random_decoder(num_classes: int, seed: int, feature_dim: int = 4) -> CNNRNNDecoder:
    torch.manual_seed(seed)
    # float64 so that near-equal path scores rank the same in the decoder and the references.
    return CNNRNNDecoder(feature_dim, num_classes, embed_dim=5, hidden_dim=6).double()


def random_features(batch: int, seed: int, feature_dim: int = 4) -> torch.Tensor:
    # Large features give peaked distributions, so that paths differ clearly in probability.
    return 3 * torch.randn(batch, feature_dim, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)


def next_log_probs(model: CNNRNNDecoder, feature: torch.Tensor, prefix: tuple) -> torch.Tensor:
    """log p(. | prefix) from teacher forcing: the last step of ``forward`` on prefix + END."""
    sequence = torch.tensor([[*prefix, model.end]])
    with torch.no_grad():
        return model(feature[None], sequence)[0, len(prefix)].log_softmax(-1)


def path_log_likelihood(model, feature, labels: tuple, max_length: int) -> float:
    """A finished path's score: its labels then END, or its labels alone at max_length."""
    with torch.no_grad():
        log_prob = model(feature[None], torch.tensor([[*labels, model.end]]))[0].log_softmax(-1)
    targets = [*labels, model.end][:max_length if len(labels) == max_length else None]
    return float(sum(log_prob[t, token] for t, token in enumerate(targets)))


def path_peak(model, feature, labels: tuple, max_length: int) -> torch.Tensor:
    """max over the path's decoding steps of each label's probability."""
    with torch.no_grad():
        prob = model(feature[None], torch.tensor([[*labels, model.end]]))[0].softmax(-1)
    steps = len(labels) if len(labels) == max_length else len(labels) + 1
    return prob[:steps, :model.num_classes].amax(0)


def reference_beam(model, feature, beam: int, max_length: int) -> tuple:
    """P1's beam search on one image with Python lists, scoring through ``forward`` only."""
    end = model.end
    open_paths, candidates = [((), 0.0)], []
    for _ in range(max_length):
        extensions = []
        for prefix, score in open_paths:
            log_prob = next_log_probs(model, feature, prefix)
            allowed = [j for j in range(end + 1) if j not in prefix]
            for j in sorted(allowed, key=lambda j: -log_prob[j])[:beam]:
                target = candidates if j == end else extensions
                target.append((prefix if j == end else prefix + (j,), score + float(log_prob[j])))
        open_paths = sorted(extensions, key=lambda path: -path[1])[:beam]
        if candidates and all(s < min(c for _, c in candidates) for _, s in open_paths):
            open_paths = []
            break
    candidates += open_paths
    return max(candidates, key=lambda path: path[1])[0]


def all_paths(num_classes: int, max_length: int):
    for size in range(max_length + 1):
        yield from itertools.permutations(range(num_classes), size)


def as_tuple(sequence: torch.Tensor) -> tuple:
    return tuple(int(x) for x in sequence if x != PAD)


@pytest.mark.parametrize("num_classes, max_length", [(3, 3), (4, 4), (4, 2)])
def test_a_beam_that_never_prunes_finds_the_most_probable_of_all_sequences(num_classes, max_length):
    # Depth t has C!/(C-t)! open paths: with that many beams nothing is pruned, and the
    # stopping rule only drops paths below a candidate, so the search is exact.
    beam = max(math.perm(num_classes, t) for t in range(max_length + 1))
    for seed in range(3):
        model, features = random_decoder(num_classes, seed), random_features(6, seed)
        result = model.decode(features, beam_size=beam, max_length=max_length)
        for b, feature in enumerate(features):
            scored = {p: path_log_likelihood(model, feature, p, max_length)
                      for p in all_paths(num_classes, max_length)}
            best = max(scored, key=scored.get)
            assert as_tuple(result.sequences[b]) == best
            assert result.labels[b].tolist() == [c in best for c in range(num_classes)]
            torch.testing.assert_close(result.scores[b], path_peak(model, feature, best,
                                                                   max_length))


@pytest.mark.parametrize("beam", [2, 3, 4, 5])
def test_batched_search_equals_the_list_based_reference_beam_search(beam):
    # beam 4 and 5 are C+1 and C+2 for C=3 labels: the vocabulary with END, plus one.
    for num_classes, max_length, seed in [(3, 3, 0), (5, 5, 1), (5, 3, 2)]:
        model, features = random_decoder(num_classes, seed), random_features(8, seed + 10)
        result = model.decode(features, beam_size=beam, max_length=max_length)
        for b, feature in enumerate(features):
            best = reference_beam(model, feature, beam, max_length)
            assert as_tuple(result.sequences[b]) == best
            torch.testing.assert_close(result.scores[b], path_peak(model, feature, best,
                                                                   max_length))


def test_beam_one_is_the_greedy_loop():
    model, features = random_decoder(6, 3), random_features(10, 4)
    result = model.decode(features, beam_size=1)
    for b, feature in enumerate(features):
        path = ()
        while len(path) < model.num_classes:
            log_prob = next_log_probs(model, feature, path)
            log_prob[list(path)] = -torch.inf
            token = int(log_prob.argmax())
            if token == model.end:
                break
            path += (token,)
        assert as_tuple(result.sequences[b]) == path
        torch.testing.assert_close(result.scores[b], path_peak(model, feature, path, 6))


def test_a_batch_gives_each_image_its_own_result():
    model, features = random_decoder(7, 5), random_features(9, 6)
    batched = model.decode(features, beam_size=3)
    for b in range(len(features)):
        alone = model.decode(features[b:b + 1], beam_size=3)
        assert torch.equal(alone.labels[0], batched.labels[b])
        assert torch.equal(alone.sequences[0], batched.sequences[b])
        torch.testing.assert_close(alone.scores[0], batched.scores[b])


class TableDecoder(CNNRNNDecoder):
    """Next-token probabilities given by hand per prefix (``default`` elsewhere); the state
    carries the prefix, so the search reorders it like the LSTM's. Counts its steps."""

    def __init__(self, num_classes: int, table: dict, default: list):
        super().__init__(1, num_classes, embed_dim=2, hidden_dim=2)
        self.table = {k: torch.tensor(v, dtype=torch.float64) for k, v in table.items()}
        self.default = torch.tensor(default, dtype=torch.float64)
        self.steps = 0

    def _initial_state(self, size, device):
        return (torch.full((size, self.num_classes), PAD, device=device),)

    def _step(self, previous, state, image_term):
        self.steps += 1
        prefix = state[0].clone()
        length = (prefix != PAD).sum(1)
        grows = (previous < self.num_classes) & (length < self.num_classes)  # not START/END
        prefix[grows, length[grows]] = previous[grows]
        probs = [self.table.get(as_tuple(row), self.default) for row in prefix]
        return torch.stack(probs).log(), (prefix,)


def table_decode(table, default, num_classes=3, **kwargs):
    model = TableDecoder(num_classes, table, default)
    return model, model.decode(torch.zeros(1, 1), **kwargs)


def test_search_stops_once_every_open_path_is_below_every_candidate():
    # Labels a, b, c = 0, 1, 2; END = 3. Beam 2 keeps {END}: 0.5 as a candidate and a: 0.3
    # open; 0.3 < 0.5, so the search stops after one step.
    model, result = table_decode({(): [0.3, 0.15, 0.05, 0.5]}, [0.1, 0.1, 0.1, 0.7], beam_size=2)
    assert model.steps == 1
    assert result.sequences.tolist() == [[PAD, PAD, PAD]] and not result.labels.any()
    torch.testing.assert_close(result.scores[0], torch.tensor([0.3, 0.15, 0.05],
                                                              dtype=torch.float64))


@pytest.mark.parametrize("after_b, steps", [([0.6, 0.0, 0.3, 0.1], 3), ([0.2, 0.0, 0.1, 0.7], 2)])
def test_the_search_stops_when_open_paths_fall_below_the_worst_candidate(after_b, steps):
    # Beam 3; labels a, b, c = 0, 1, 2, END = 3. Step 1: a .4 and b .2 open, END .35 a
    # candidate. Step 2: (a, END) .36 is a candidate; with the first ``after_b``, (b, END)
    # .02 is one too and the open paths (b, a) .12, (b, c) .06, (a, b) .024 are below the
    # best candidate but not all below the worst (.02): a third step runs (a rule comparing
    # with the best candidate would stop here). With the second, (b, END) is .14 and the open
    # paths .04, .024, .02 are all below it: the search stops after two steps.
    table = {(): [0.4, 0.2, 0.05, 0.35], (0,): [0.0, 0.06, 0.04, 0.9], (1,): after_b,
             (1, 0): [0.0, 0.0, 0.5, 0.5]}
    model, result = table_decode(table, [0.1, 0.1, 0.1, 0.7], beam_size=3)
    assert model.steps == steps
    assert result.sequences.tolist() == [[0, PAD, PAD]]  # (a, END): .36
    assert result.labels.tolist() == [[True, False, False]]
    # The path's steps are () and (a,): each label's larger probability of the two.
    torch.testing.assert_close(result.scores[0], torch.tensor([0.4, 0.2, 0.05],
                                                              dtype=torch.float64))


def test_without_a_candidate_the_search_goes_on_however_improbable_the_paths():
    # Every step puts END last, so greedy emits labels until max_length closes the path.
    model, result = table_decode({}, [0.5, 0.3, 0.15, 0.05], beam_size=1)
    assert model.steps == 3
    assert result.sequences.tolist() == [[0, 1, 2]]  # 0 would repeat: the mask forbids it


def test_labels_never_repeat_even_when_the_decoder_wants_them_to():
    # Labels 0..3, END = 4; label 0 is always the most probable token, END the least.
    default = [0.6, 0.2, 0.1, 0.06, 0.04]
    _, greedy = table_decode({}, default, num_classes=4, beam_size=1)
    assert greedy.sequences.tolist() == [[0, 1, 2, 3]]  # 0, then the best unused each time
    # Beam 3: END enters a path's top 3 once two labels are used, so the first candidates are
    # (0, 1, END) .6 * .2 * .04 = .0048 and smaller; longer paths only lose (x <= .1).
    _, beam = table_decode({}, default, num_classes=4, beam_size=3)
    assert beam.sequences.tolist() == [[0, 1, PAD, PAD]]


def test_end_closes_a_path_and_never_appears_in_the_result():
    table = {(): [0.7, 0.1, 0.1, 0.1], (0,): [0.0, 0.1, 0.1, 0.8]}
    _, result = table_decode(table, [0.25, 0.25, 0.25, 0.25], beam_size=1)
    assert result.sequences.tolist() == [[0, PAD, PAD]]
    assert result.labels.tolist() == [[True, False, False]]
    _, result = table_decode({(): [0.1, 0.1, 0.1, 0.7]}, [0.25] * 4, beam_size=1)
    assert result.sequences.tolist() == [[PAD, PAD, PAD]] and not result.labels.any()


def test_max_length_closes_open_paths_without_an_end_term():
    # Labels 0..3, END = 4, max_length 2. After label 1, END is likely: (1, END) is a
    # candidate at .3 * .35 = .105. (0, 1) is closed at max_length with .4 * .3 = .12 and wins;
    # with an END term (x .02) it would be .0024 and lose to (1, END).
    model = TableDecoder(4, {(1,): [0.2, 0.0, 0.3, 0.15, 0.35]}, [0.4, 0.3, 0.2, 0.08, 0.02])
    result = model.decode(torch.zeros(2, 1), beam_size=3, max_length=2)
    assert model.steps == 2 and result.sequences.shape == (2, 2)
    assert result.sequences.tolist() == [[0, 1], [0, 1]]
    # Its two steps (both the default distribution); no step after max_length.
    torch.testing.assert_close(result.scores[0], torch.tensor([0.4, 0.3, 0.2, 0.08],
                                                              dtype=torch.float64))


def test_decode_rejects_bad_arguments():
    model = random_decoder(3, 0)
    features = random_features(2, 0)
    for kwargs, name in [({"beam_size": 0}, "beam_size"), ({"max_length": 0}, "max_length"),
                         ({"max_length": 4}, "max_length"), ({"beam_size": 2.0}, "beam_size")]:
        with pytest.raises(ValueError, match=name):
            model.decode(features, **kwargs)
    with pytest.raises(ValueError, match="image_features"):
        model.decode(features[:, :3])


def test_forward_is_the_papers_formula_with_one_tied_label_matrix():
    model = random_decoder(4, 7)
    features = random_features(3, 8)
    sequence = torch.tensor([[2, 0, 4], [1, 4, PAD], [4, PAD, PAD]])
    # The formula with the input and output uses of U_l as two separate leaves.
    u_in = model.label_embedding.detach().clone().requires_grad_()
    u_out = model.label_embedding.detach().clone().requires_grad_()
    previous = torch.cat([model.start.expand(3, 1, -1), u_in[sequence[:, :-1].clamp(min=0)]], 1)
    o, _ = model.lstm(previous)
    x = torch.relu(o @ model.proj_rnn.weight.T + features[:, None] @ model.proj_image.weight.T
                   + model.proj_image.bias)
    expected = x @ u_out.T
    F.cross_entropy(expected.flatten(0, 1), sequence.flatten(), ignore_index=PAD).backward()

    model.zero_grad()
    logits = model(features, sequence)
    torch.testing.assert_close(logits, expected.detach())
    model.sequence_loss(logits, sequence).backward()
    assert [p for p in model.parameters() if p.shape == model.label_embedding.shape] == [
        model.label_embedding]
    assert u_in.grad.abs().sum() > 0 and u_out.grad.abs().sum() > 0
    torch.testing.assert_close(model.label_embedding.grad, u_in.grad + u_out.grad)


def test_step_logits_depend_only_on_the_prefix():
    model, features = random_decoder(5, 9), random_features(1, 9)
    a = model(features, torch.tensor([[3, 1, 0, 5]]))
    b = model(features, torch.tensor([[3, 4, 5, PAD]]))
    torch.testing.assert_close(a[:, :2], b[:, :2])  # same prefix (3,) up to step 1
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_sequence_loss_is_the_mean_cross_entropy_over_non_pad_steps():
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    sequence = torch.tensor([[1, 0, 3], [3, PAD, PAD]])
    terms = [-logits[b, t].log_softmax(-1)[sequence[b, t]]
             for b, t in [(0, 0), (0, 1), (0, 2), (1, 0)]]
    torch.testing.assert_close(CNNRNNDecoder.sequence_loss(logits, sequence),
                               torch.stack(terms).mean())


def test_forward_and_constructor_reject_bad_input():
    model, features = random_decoder(3, 0), random_features(2, 0)
    with pytest.raises(ValueError, match="sequence values"):
        model(features, torch.tensor([[0, 5], [3, PAD]]))
    with pytest.raises(ValueError, match="sequence must be int64"):
        model(features, torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="activation"):
        CNNRNNDecoder(4, 3, activation="sigmoid")
    with pytest.raises(ValueError, match="num_classes"):
        CNNRNNDecoder(4, 0)


@pytest.mark.parametrize("activation, h", [("tanh", torch.tanh), ("identity", lambda v: v)])
def test_activation_is_h_in_the_projection(activation, h):
    torch.manual_seed(0)
    model = CNNRNNDecoder(4, 3, embed_dim=5, hidden_dim=6, activation=activation)
    features, sequence = torch.randn(2, 4), torch.tensor([[0, 3], [3, PAD]])
    o, _ = model.lstm(model.start.expand(2, 1, -1))
    x = h(model.proj_rnn(o) + model.proj_image(features)[:, None])
    torch.testing.assert_close(model(features, sequence)[:, :1], x @ model.label_embedding.T)


LABELS = torch.tensor([[1, 0, 1, -1],
                       [0, 1, 1, 1],
                       [0, 0, 0, 0],
                       [-1, 1, 0, 0]], dtype=torch.int8)  # positives per label: 1, 2, 2, 1


def test_frequency_order_is_most_frequent_first_ties_by_index_then_end():
    # Order 1, 2, 0, 3; label 3 of image 0 and label 0 of image 3 are unknown, not positive.
    assert label_sequences(LABELS).tolist() == [[2, 0, 4, PAD], [1, 2, 3, 4],
                                                [4, PAD, PAD, PAD], [1, 4, PAD, PAD]]


def test_equal_frequencies_keep_label_index_order_on_a_large_vocabulary():
    # 64 labels, frequencies in {0, 1, 2}: by hand, the 2s, then the 1s, then the 0s, each
    # group in index order (large enough that an unstable sort would shuffle the groups).
    frequencies = torch.arange(64) % 3
    expected = [c for f in (2, 1, 0) for c in range(64) if c % 3 == f]
    sequences = label_sequences(torch.ones(1, 64, dtype=torch.int8), frequencies=frequencies)
    assert sequences.tolist() == [expected + [64]]
    rare = label_sequences(torch.ones(1, 64, dtype=torch.int8), "rare", frequencies=frequencies)
    assert rare.tolist() == [[c for f in (0, 1, 2) for c in range(64) if c % 3 == f] + [64]]


def test_rare_order_and_given_frequencies():
    assert label_sequences(LABELS, "rare").tolist() == [[0, 2, 4, PAD], [3, 1, 2, 4],
                                                        [4, PAD, PAD, PAD], [1, 4, PAD, PAD]]
    # Training-split counts: order 3, 0, 1, 2 (labels 1 and 2 tie at 0: by index).
    assert label_sequences(LABELS, frequencies=[5, 0, 0, 9]).tolist() == [
        [0, 2, 4, PAD], [3, 1, 2, 4], [4, PAD, PAD, PAD], [1, 4, PAD, PAD]]


def test_random_order_is_one_permutation_for_every_image():
    labels = (torch.rand(30, 8, generator=torch.Generator().manual_seed(1)) < 0.4).to(torch.int8)
    labels[0] = 1  # this image shows the whole permutation
    sequences = label_sequences(labels, "random", seed=3)
    permutation = sequences[0, :8].tolist()
    assert sorted(permutation) == list(range(8)) and sequences[0, 8] == 8
    for row, seq in zip(labels, sequences):
        positives = [c for c in permutation if row[c] == 1]
        assert seq.tolist() == positives + [8] + [PAD] * (8 - len(positives))
    assert torch.equal(label_sequences(labels, "random", seed=3), sequences)
    others = {tuple(label_sequences(labels, "random", seed=s)[0].tolist()) for s in range(4, 9)}
    assert others != {tuple(sequences[0].tolist())}


def test_label_sequences_rejects_bad_input():
    with pytest.raises(ValueError, match="order"):
        label_sequences(LABELS, "alphabetical")
    with pytest.raises(ValueError, match="frequencies"):
        label_sequences(LABELS, frequencies=[1, 2, 3])
    with pytest.raises(ValueError, match="labels must hold"):
        label_sequences(torch.tensor([[2, 0]], dtype=torch.int8))
    with pytest.raises(ValueError, match="labels must be N x C"):
        label_sequences(torch.tensor([1, 0], dtype=torch.int8))
