import ast
import itertools
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
from matplotlib.container import BarContainer
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


def test_plot_embedding_colours_by_the_rarest_positive_among_the_top():
    # Vocabulary order is the reverse of frequency order (a: 4, b: 3, c: 2, d: 1 positives),
    # so picking by column index instead of frequency would give other colours.
    classes = ["d", "c", "b", "a"]
    labels = torch.tensor([
        [0, 0, 1, 1],   # a, b -> b
        [0, 1, 1, 0],   # b, c -> b
        [1, 1, 0, -1],  # c, d -> other (neither in the top 2; -1 is unknown, not positive)
        [0, 0, 0, 1],   # a
        [0, 0, 0, 0],   # nothing -> other
        [0, 0, 0, 1],   # a
        [0, 0, 1, 1],   # a, b -> b
    ], dtype=torch.int8)
    points = np.arange(14, dtype=float).reshape(7, 2)
    ax = plot_embedding(points, labels, classes, top=2, title="t")
    groups = scatter_groups(ax)
    assert set(groups) == {"a", "b", "other"}
    assert np.array_equal(groups["a"], points[[3, 5]])
    assert np.array_equal(groups["b"], points[[0, 1, 6]])
    assert np.array_equal(groups["other"], points[[2, 4]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "other"]
    colours = {c.get_label(): tuple(c.get_facecolors()[0]) for c in ax.collections}
    assert colours["other"] == to_rgba((0.75, 0.75, 0.75))
    assert len(set(colours.values())) == 3
    assert ax.get_title() == "t"
    assert ax.get_xlabel() and ax.get_ylabel()

    # With the top 3, points 1 and 2 take c, their rarer label (point 2: not d, listed first).
    groups = scatter_groups(plot_embedding(points, labels, classes, top=3))
    assert np.array_equal(groups["c"], points[[1, 2]])
    # x is on every point, each of which has a rarer label: x colours nothing and is not listed.
    ax = plot_embedding(points[:4], [[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1]], ["x", "y", "z"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y", "z"]

    # One label against the rest, by name or index.
    for label in ("b", 2):
        groups = scatter_groups(plot_embedding(points, labels, classes, label=label))
        assert set(groups) == {"b", "other"} and np.array_equal(groups["b"], points[[0, 1, 6]])
    with pytest.raises(ValueError, match="label 'e' is not among the classes"):
        plot_embedding(points, labels, classes, label="e")


def test_embedding_legends_stay_inside_the_figure_and_off_the_next_panel():
    labels = np.eye(12, dtype=int)[np.arange(60) % 12]
    classes = [f"a rather long label name {i}" for i in range(12)]
    points = np.random.default_rng(0).standard_normal((60, 2))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for ax in axes:
        plot_embedding(points, labels, classes, ax=ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert box.x0 <= legend.x0 and legend.x1 <= box.x1 and box.y0 <= legend.y0 and legend.y1 <= box.y1
    assert not axes[0].get_legend().get_window_extent(renderer).overlaps(axes[1].get_window_extent(renderer))


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
    axes = np.array(fig.axes[:-1]).reshape(2, 4)  # the last: the colour bar
    assert [[ax.get_title() for ax in row[1:]] for row in axes] == titles
    assert np.array_equal(axes[0, 0].images[0].get_array(), images[0])
    assert np.allclose(axes[1, 2].images[0].get_array(), overlay(images[1], heats[1, 1]))
    with pytest.raises(ValueError, match="titles"):
        plot_cams(images, heats, titles[:1])


def test_plot_cams_titles_each_image_with_its_true_labels_and_adds_a_colour_bar():
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    fig = plot_cams(images, torch.rand(2, 1, 8, 8), [["a 0.9"], ["b 0.2"]], truth=[["a", "c"], []])
    image_axes = [ax for ax in fig.axes if ax.images]
    assert [image_axes[i].get_title() for i in (0, 2)] == ["true: a, c", "true: (no label)"]
    (bar,) = [ax for ax in fig.axes if not ax.images]  # the colour bar's own Axes
    assert bar.get_ylabel() and bar.get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="truth must be 2 lists"):
        plot_cams(images, torch.rand(2, 1, 8, 8), [["a"], ["b"]], truth=[["a"]])


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
        assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in (loss_ax, metric_ax))
    pd.DataFrame({"epoch": [1], "lr": [0.1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="history.csv: a history needs"):
        plot_history(path)


def test_plot_history_of_a_run_selecting_on_test_draws_the_test_metrics():
    # fit names the scored split's columns after selection_split ("test_CF1", ...)
    history = history_frame().rename(columns=lambda c: c.replace("val_", "test_"))
    loss_ax, metric_ax = plot_history(history).axes[:2]
    assert [line.get_label() for line in loss_ax.lines] == ["train", "test"]
    assert [line.get_label() for line in metric_ax.lines] == ["mAP", "CF1", "OF1"]
    assert "test" in metric_ax.get_title()


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
    assert "count" in ax.get_xlabel() and ax.get_ylabel() == "F1"


def visible_tick_boxes(ax):
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    labels = ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
    lo, hi = sorted(ax.get_xlim())
    return [t.get_window_extent(renderer) for t in labels
            if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi]


@pytest.mark.parametrize("frequency", [np.arange(12, 61, 4), np.arange(100, 900, 50), np.geomspace(1, 500, 12),
                                       np.geomspace(2, 90000, 12)], ids=["12-60", "100-850", "1-500", "2-90000"])
def test_plot_f1_vs_frequency_tick_labels_do_not_overlap(frequency):
    # A small panel, where matplotlib's own log-axis labels (2x10^1, 3x10^1, ...) collide.
    _, ax = plt.subplots(figsize=(3, 3))
    plot_f1_vs_frequency(np.linspace(0, 1, len(frequency)), frequency, ax=ax)
    boxes = sorted(visible_tick_boxes(ax), key=lambda b: b.x0)
    assert len(boxes) >= 2  # a reader can tell the scale
    assert all(left.x1 < right.x0 for left, right in itertools.pairwise(boxes))


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
    assert ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel()


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
    assert ax.get_xlabel() and ax.get_ylabel()


def test_positive_names_lists_each_images_positive_labels():
    assert viz.positive_names(LABELS, CLASSES)[:5] == [["sky", "tree"], ["sky", "car"], [],
                                                       ["sky", "tree", "car"], ["tree"]]


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


# ----- the report's summary plot


def summary_results(seeds: int) -> pd.DataFrame:
    rows = [{"paper": "p0", "dataset": "corel-5k", "loss": loss, "selected on": "val", "seed": seed,
             "CF1@tuned": value + 0.02 * seed}
            for loss, value in (("bce", 0.40), ("unsymmetric", 0.47)) for seed in range(seeds)]
    return pd.DataFrame(rows)


def test_plot_summary_draws_error_bars_only_for_several_seeds_and_keeps_its_legend_off_the_bars():
    from annotlib.report import plot_summary

    def bars(ax):
        (container,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        return container

    (ax,) = plot_summary(summary_results(1)).axes
    assert bars(ax).errorbar is None and ax.get_ylabel() == "test CF1@tuned"
    assert np.allclose([bar.get_height() for bar in bars(ax)], [0.40, 0.47])
    fig = plot_summary(summary_results(2))
    (ax,) = fig.axes
    segments = bars(ax).errorbar.lines[2][0].get_segments()  # mean ± sample std of 2 seeds
    assert np.allclose([seg[:, 1] for seg in segments], [[0.41 - 0.014142, 0.41 + 0.014142],
                                                         [0.48 - 0.014142, 0.48 + 0.014142]], atol=1e-5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == ["ours: mean over seeds, ± sample std", "paper"]
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    assert not box.overlaps(ax.get_window_extent(renderer))
