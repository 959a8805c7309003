import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgba
from threadpoolctl import threadpool_limits
from torch import nn

from annotlib import viz
from annotlib.data.labels import Split
from annotlib.viz import (
    class_activation_maps,
    dataset_summary,
    overlay,
    plot_cams,
    plot_cooccurrence,
    plot_embedding,
    plot_f1_vs_frequency,
    plot_history,
    plot_image_grid,
    plot_label_frequency,
    project_2d,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def clusters(per_cluster: int, dim: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight Gaussian clusters far apart, and their ids."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(3, dim)
    ids = np.repeat(np.arange(3), per_cluster)
    return centres[ids] + rng.standard_normal((len(ids), dim)), ids


@pytest.fixture
def one_thread():
    """t-SNE on one thread: torch's and scikit-learn's OpenMP runtimes spin-waiting against
    each other on two busy cores made a sub-second t-SNE take 20 s."""
    with threadpool_limits(limits=1):
        yield


def knn_agreement(points: np.ndarray, ids: np.ndarray, k: int = 5) -> float:
    """Fraction of each point's k nearest 2-D neighbours that share its cluster."""
    distance = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argsort(distance, axis=1)[:, :k]
    return float((ids[neighbours] == ids[:, None]).mean())


# ----- embeddings


def test_tsne_is_deterministic_and_keeps_clusters_apart(one_thread):
    x, ids = clusters(20)
    points = project_2d(torch.from_numpy(x), "tsne", seed=3, max_iter=300)
    assert points.shape == (60, 2)
    assert np.array_equal(points, project_2d(x, "tsne", seed=3, max_iter=300))
    assert knn_agreement(points, ids) == 1.0


def test_project_2d_rejects_unknown_methods_and_too_few_points(one_thread):
    x, _ = clusters(2)
    with pytest.raises(ValueError, match="unknown projection method 'pca'"):
        project_2d(x, "pca")
    with pytest.raises(ValueError, match="at least 3 points, got 2"):
        project_2d(x[:2])
    # Five points: the default perplexity of 30 is clipped below N instead of failing.
    assert project_2d(x[:5], "tsne", max_iter=250).shape == (5, 2)
    assert project_2d(x[:3], "tsne", max_iter=250).shape == (3, 2)


@pytest.mark.slow
def test_umap_is_deterministic_and_keeps_clusters_apart():
    x, ids = clusters(10)
    points = project_2d(x, "umap", seed=1, n_epochs=50)
    assert points.shape == (30, 2)
    assert np.array_equal(points, project_2d(x, "umap", seed=1, n_epochs=50))
    assert knn_agreement(points, ids, k=3) == 1.0


def scatter_groups(ax) -> dict[str, np.ndarray]:
    return {c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections}


def test_plot_embedding_colours_by_the_most_frequent_positive_among_the_top():
    # Vocabulary order is the reverse of frequency order (a: 4, b: 3, c: 2, d: 1 positives),
    # so picking by column index instead of frequency would give other colours.
    classes = ["d", "c", "b", "a"]
    labels = torch.tensor([
        [0, 0, 1, 1],   # a, b -> a
        [0, 1, 1, 0],   # b, c -> b
        [1, 1, 0, -1],  # c, d -> other (neither in the top 2; -1 is unknown, not positive)
        [0, 0, 0, 1],   # a
        [0, 0, 0, 0],   # nothing -> other
        [0, 0, 0, 1],   # a
        [0, 0, 1, 1],   # a, b -> a
    ], dtype=torch.int8)
    points = np.arange(14, dtype=float).reshape(7, 2)
    ax = plot_embedding(points, labels, classes, top=2, title="t")
    groups = scatter_groups(ax)
    assert set(groups) == {"a", "b", "other"}
    assert np.array_equal(groups["a"], points[[0, 3, 5, 6]])
    assert np.array_equal(groups["b"], points[[1]])
    assert np.array_equal(groups["other"], points[[2, 4]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "other"]
    colours = {c.get_label(): tuple(c.get_facecolors()[0]) for c in ax.collections}
    assert colours["other"] == to_rgba((0.75, 0.75, 0.75))
    assert len(set(colours.values())) == 3
    assert ax.get_title() == "t"

    # With the top 3, the third point takes c, its more frequent label (not d, listed first).
    groups = scatter_groups(plot_embedding(points, labels, classes, top=3))
    assert np.array_equal(groups["c"], points[[2]])


def test_plot_embedding_takes_single_label_class_ids():
    ids = torch.tensor([2, 0, 0, 1, 0, 1])
    points = np.random.default_rng(0).standard_normal((6, 2))
    _, ax = plt.subplots()
    assert plot_embedding(points, ids, ["x", "y", "z"], ax=ax, top=2) is ax
    groups = scatter_groups(ax)
    assert np.array_equal(groups["x"], points[[1, 2, 4]])
    assert np.array_equal(groups["y"], points[[3, 5]])
    assert np.array_equal(groups["other"], points[[0]])
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\)"):
        plot_embedding(points, ids + 1, ["x", "y", "z"])


# ----- class activation maps


class StandInCam(nn.Module):
    """A model whose ``cam`` returns a fixed map and records the mode it was called in."""

    def __init__(self, maps: torch.Tensor):
        super().__init__()
        self.maps = maps
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm2d(3)
        self.weight = nn.Parameter(torch.zeros(1))
        self.modes = []

    def cam(self, x):
        self.modes.append((self.training, self.drop.training))
        return self.maps[: len(x)]


def test_class_activation_maps_pick_upsample_and_normalise():
    b, c, h, w, size = 2, 3, 4, 4, 32
    maps = torch.zeros(b, c, h, w)
    maps[0, 1, 0, 3] = 5.0  # image 0, class 1: a peak in the top-right cell
    maps[0, 2] = -2.0 * torch.ones(h, w)
    maps[0, 2, 2, 1] = -1.0  # image 0, class 2: a peak on a negative background
    maps[1, 0, 3, 0] = 7.0  # image 1, class 0: bottom-left
    maps[1, 2] = 4.0  # image 1, class 2: constant
    model = StandInCam(maps)
    model.train()
    model.norm.eval()  # a submodule in another mode than its parent must stay so
    heats = class_activation_maps(model, torch.zeros(b, 3, size, size), torch.tensor([[1, 2], [0, 2]]))

    assert heats.shape == (b, 2, size, size) and heats.dtype == torch.float32
    assert model.modes == [(False, False)]
    assert model.training and model.drop.training and not model.norm.training
    # Hand computation: pick, upsample bilinearly, min-max normalise.
    picked = torch.stack([maps[0, 1], maps[0, 2], maps[1, 0]])[:, None]
    up = F.interpolate(picked, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low, high = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    assert torch.allclose(torch.stack([heats[0, 0], heats[0, 1], heats[1, 0]]),
                          (up - low) / (high - low))
    # Each peak lands in the 8 x 8 block of its cell; every non-constant map spans [0, 1].
    for (img, k), (row, col) in {(0, 0): (0, 3), (0, 1): (2, 1), (1, 0): (3, 0)}.items():
        peak = divmod(int(heats[img, k].argmax()), size)
        assert (peak[0] // 8, peak[1] // 8) == (row, col)
        assert heats[img, k].min() == 0.0 and heats[img, k].max() == 1.0
    assert torch.equal(heats[1, 1], torch.zeros(size, size))  # the constant map


def test_class_activation_maps_check_shapes_and_class_ids():
    model = StandInCam(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"class_ids must be \[B=1, K\]"):
        class_activation_maps(model, torch.zeros(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"class_ids must lie in \[0, 3\)"):
        class_activation_maps(model, torch.zeros(1, 3, 8, 8), torch.tensor([[3]]))


def test_overlay_blends_image_and_colour_map():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    heat = rng.random((5, 6))
    coloured = matplotlib.colormaps["jet"](heat)[..., :3]
    assert np.array_equal(overlay(image, heat, alpha=0.0), image / 255.0)
    assert np.array_equal(overlay(image, torch.from_numpy(heat), alpha=1.0), coloured)
    mixed = overlay(image, heat, alpha=0.25, cmap="viridis")
    assert np.allclose(mixed, 0.75 * image / 255 + 0.25 * matplotlib.colormaps["viridis"](heat)[..., :3])
    assert mixed.shape == (5, 6, 3) and 0.0 <= mixed.min() and mixed.max() <= 1.0
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(float), heat)


def test_plot_cams_draws_the_image_then_one_overlay_per_class():
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    heats = torch.rand(2, 3, 8, 8)
    titles = [["a", "b", "c"], ["d", "e", "f"]]
    fig = plot_cams(images, heats, titles)
    axes = np.array(fig.axes).reshape(2, 4)
    assert [[ax.get_title() for ax in row[1:]] for row in axes] == titles
    assert np.array_equal(axes[0, 0].images[0].get_array(), images[0])
    assert np.allclose(axes[1, 2].images[0].get_array(), overlay(images[1], heats[1, 1]))
    with pytest.raises(ValueError, match="titles"):
        plot_cams(images, heats, titles[:1])


# ----- curves


def history_frame() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "lr": [1e-3, 5e-4, 1e-4],
                         "train_loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.7, 0.6],
                         "val_mAP": [0.2, 0.4, 0.5], "val_CF1": [0.1, 0.3, 0.35],
                         "val_OF1": [0.2, 0.35, 0.4], "train_seconds": [3.0, 3.1, 3.0]})


def test_plot_history_draws_losses_and_validation_metrics(tmp_path):
    path = tmp_path / "history.csv"
    history_frame().to_csv(path, index=False)
    for history in (history_frame(), path, str(path)):
        loss_ax, metric_ax = plot_history(history).axes[:2]
        assert [line.get_label() for line in loss_ax.lines] == ["train", "val"]
        assert [line.get_label() for line in metric_ax.lines] == ["mAP", "CF1", "OF1"]
        assert np.array_equal(metric_ax.lines[0].get_ydata(), [0.2, 0.4, 0.5])
    pd.DataFrame({"epoch": [1], "lr": [0.1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="history.csv: a history needs"):
        plot_history(path)


def test_plot_f1_vs_frequency_places_and_names_labels():
    f1 = torch.tensor([0.1, 0.9, 0.5, 0.0, 0.7], dtype=torch.float64)
    frequency = torch.tensor([3, 100, 20, 0, 50])
    ax = plot_f1_vs_frequency(f1, frequency, classes=["a", "b", "c", "d", "e"], annotate=2)
    assert ax.get_xscale() == "log"
    assert np.array_equal(ax.collections[0].get_offsets(),
                          [[3, 0.1], [100, 0.9], [20, 0.5], [50, 0.7]])
    assert [t.get_text() for t in ax.texts] == ["b", "e"]
    assert "(1 without training positives not shown)" in ax.get_title()
    assert not plot_f1_vs_frequency(f1, frequency).texts  # names need classes


# ----- datasets


LABELS = torch.tensor([
    [1, 1, 0, 0],
    [1, 0, 1, 0],
    [0, 0, 0, 0],
    [1, 1, 1, 0],
    [0, 1, -1, 0],
    [1, 0, 0, 0],
], dtype=torch.int8)
CLASSES = ["sky", "tree", "car", "cat"]


def test_dataset_summary_counts_by_hand():
    def split(name, labels):
        return Split("toy", name, CLASSES, [Path(f"{name}{i}.jpg") for i in range(len(labels))],
                     labels)

    table = dataset_summary({"train": split("train", LABELS), "test": split("test", LABELS[:2])})
    assert list(table.index) == ["train", "test"]
    train, test = table.loc["train"], table.loc["test"]
    assert train["images"] == 6 and train["labels"] == 4
    assert train["mean labels per image"] == pytest.approx(9 / 6)  # the -1 is not positive
    assert (train["min labels per image"], train["max labels per image"]) == (0, 3)
    assert train["images without labels"] == 1 and train["labels without positives"] == 1
    assert test["mean labels per image"] == 2.0 and test["labels without positives"] == 1


def test_plot_label_frequency_bars_are_sorted_column_sums():
    ax = plot_label_frequency(LABELS, CLASSES)
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [4, 3, 2, 0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sky", "tree", "car", "cat"]
    assert ax.get_yscale() == "log"


def test_plot_cooccurrence_shows_conditional_probabilities():
    ax = plot_cooccurrence(LABELS, CLASSES, top=3)
    # sky (4 images), tree (3), car (2): P(column | row) = together / row count.
    expected = np.array([
        [4 / 4, 2 / 4, 2 / 4],
        [2 / 3, 3 / 3, 1 / 3],
        [2 / 2, 1 / 2, 2 / 2],
    ])
    assert np.allclose(np.asarray(ax.collections[0].get_array()).reshape(3, 3), expected)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sky", "tree", "car"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sky", "tree", "car"]
    # Only labels with a positive take part: "cat" never appears.
    assert len(plot_cooccurrence(LABELS, CLASSES, top=10).get_yticklabels()) == 3


def test_plot_image_grid_titles_every_image():
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    fig = plot_image_grid(images, list("abcde"), ncols=4)
    assert len(fig.axes) == 8
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == list("abcde")
    assert np.array_equal(shown[4].images[0].get_array(), images[4])


# ----- module boundaries


def test_viz_imports_neither_train_nor_umap_at_module_level():
    """DESIGN: viz reads results and does not depend on training; umap (numba compile) is
    imported only when a UMAP projection is asked for."""
    for path in Path(viz.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                modules = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                assert not module.startswith(("annotlib.train", "..train", "umap")), (path, module)
