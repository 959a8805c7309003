import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, ndcg_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from annotlib.data.emotions import EMOTIONS, category_polarity, graded_relevance
from annotlib.metrics.classification import accuracy, confusion_matrix, polarity_accuracy
from annotlib.metrics.retrieval import retrieval_metrics, retrieval_scores


def sklearn_reference(x: torch.Tensor, cats: torch.Tensor, gains: np.ndarray, ks):
    """Per query: scikit-learn AP and nDCG, P@K by counting, on a NumPy ranking of the other
    items by float64 squared distance with ties by index (scores = minus the position)."""
    xd, c = x.double().numpy(), cats.numpy()
    out = {name: [] for name in ("AP", *(f"P@{k}" for k in ks), "nDCG")}
    for q in range(len(xd)):
        others = np.delete(np.arange(len(xd)), q)
        order = np.lexsort((others, ((xd[others] - xd[q]) ** 2).sum(1)))
        score = np.empty(len(others))
        score[order] = -np.arange(len(others))
        relevant = c[others] == c[q]
        out["AP"].append(average_precision_score(relevant, score) if relevant.any() else np.nan)
        for k in ks:
            out[f"P@{k}"].append(relevant[order[:k]].sum() / k)
        out["nDCG"].append(ndcg_score(gains[c[q], c[others]][None], score[None]))
    return {name: np.asarray(v) for name, v in out.items()}


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("chunk_elements", [1 << 23, 150])  # one chunk per category; 2 rows
def test_retrieval_matches_sklearn_per_query(kind, chunk_elements):
    g = torch.Generator().manual_seed(0)
    n = 70
    cats = torch.randint(0, 7, (n,), generator=g)
    cats[-1] = 7  # category 7 has a single member: no relevant item for that query
    if kind == "ties":  # small integer grid: many exactly equal distances, across categories
        x = torch.randint(0, 2, (n, 3), generator=g).float()
    else:
        x = torch.randn(n, 16, generator=g)
    gains = graded_relevance(EMOTIONS)
    ks = (1, 5, 10)
    got = retrieval_scores(x, cats, gains, ks, chunk_elements=chunk_elements)
    want = sklearn_reference(x, cats, gains.numpy(), ks)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], atol=1e-6, equal_nan=True,
                                   err_msg=name)
    assert torch.isnan(got["AP"][-1]) and got["nDCG"][-1] > 0  # same-polarity gains remain
    means = retrieval_metrics(x, cats, gains, ks)
    assert means["queries"] == n - 1
    assert means["mAP"] == pytest.approx(np.nanmean(want["AP"]), abs=1e-6)
    assert means["nDCG"] == pytest.approx(want["nDCG"][:-1].mean(), abs=1e-6)


def test_retrieval_by_hand_on_a_line():
    # points on a line: from item 0 the ranking is 1, 2, 3 (distances 1, 4, 9)
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    cats = torch.tensor([0, 1, 0, 0])
    got = retrieval_scores(x, cats, ks=(1, 2, 3))
    assert got["AP"][0].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert [got[f"P@{k}"][0].item() for k in (1, 2, 3)] == pytest.approx([0, 1 / 2, 2 / 3])
    dcg, idcg = 1 / np.log2(3) + 1 / np.log2(4), 1 + 1 / np.log2(3)
    assert got["nDCG"][0].item() == pytest.approx(dcg / idcg)
    # item 1 is equidistant from items 0 and 2: the tie goes to the lower index, item 0
    tie = retrieval_scores(x, torch.tensor([0, 1, 2, 1]), ks=(1,))
    assert tie["AP"][1].item() == pytest.approx(1 / 3)


def test_retrieval_rejects_bad_input():
    x, cats = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="ks must be integers in 1..5"):
        retrieval_scores(x, cats, ks=(6,))
    with pytest.raises(ValueError, match="category_ids must be 6 integers"):
        retrieval_scores(x, cats[:5])
    with pytest.raises(ValueError, match="graded_relevance must be K x K"):
        retrieval_scores(x, cats, torch.ones(2, 2), ks=(1,))
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_scores(torch.full((6, 2), float("nan")), cats, ks=(1,))
    with pytest.raises(ValueError, match="no query has a relevant item"):
        retrieval_metrics(x, torch.arange(6), ks=(1,))


@pytest.mark.gpu
def test_retrieval_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(1)
    x, cats = torch.randn(500, 32, generator=g), torch.randint(0, 8, (500,), generator=g)
    cpu = retrieval_scores(x, cats, graded_relevance(EMOTIONS))
    gpu = retrieval_scores(x.cuda(), cats.cuda(), graded_relevance(EMOTIONS))
    for name, value in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), value, equal_nan=True, atol=1e-5, rtol=0)


def test_classification_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 8, generator=g)
    truth = torch.randint(0, 8, (200,), generator=g)
    pred = logits.argmax(1)
    assert accuracy(logits, truth) == pytest.approx(accuracy_score(truth, pred))
    assert accuracy(pred, truth) == pytest.approx(accuracy_score(truth, pred))
    sign = category_polarity(EMOTIONS)  # 1 for the first four (positive) emotions
    assert polarity_accuracy(pred, truth, sign) == pytest.approx(
        accuracy_score(truth.numpy() < 4, pred.numpy() < 4))
    assert confusion_matrix(pred, truth, 8).tolist() == \
        sk_confusion_matrix(truth, pred, labels=range(8)).tolist()
    # an unused class still gets its row and column
    assert confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 3).tolist() == \
        [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def test_classification_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="category_ids must be 3 integer ids"):
        accuracy(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="N x C logits or N integer ids"):
        accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"0\.\.1 \(num_classes\)"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="one polarity per class id"):
        polarity_accuracy(torch.tensor([0, 3]), torch.tensor([0, 1]), torch.tensor([1, 0]))
