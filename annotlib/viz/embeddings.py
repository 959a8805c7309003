"""2-D projections of image embeddings (t-SNE, UMAP) and their scatter plot by label."""

from __future__ import annotations

import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

OTHER_COLOUR = (0.75, 0.75, 0.75)


def to_numpy(x) -> np.ndarray:
    """``x`` as a numpy array: a tensor is detached and copied to the CPU (bfloat16, which numpy
    lacks, becomes float32), anything else goes through ``np.asarray``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _cache_umap_jit() -> None:
    """Turn on numba's on-disk cache for umap's module-level jitted functions.

    umap-learn compiles about ten numba functions on the first fit in every process (several
    seconds, more on a busy machine) because, unlike pynndescent's, they are not declared
    ``cache=True``; ``NUMBA_CACHE_DIR`` alone does not help. Enabling the cache makes every
    later process load them from disk instead (``benchmarks/umap_first_use.py``). The cache
    goes where numba puts it by default: ``__pycache__`` beside umap's sources when writable,
    else the user's cache folder (``~/.cache/numba``), or ``NUMBA_CACHE_DIR`` when set.
    """
    from numba.core.registry import CPUDispatcher

    for name in ("umap.distances", "umap.layouts", "umap.umap_", "umap.utils"):
        for obj in vars(sys.modules[name]).values():
            if isinstance(obj, CPUDispatcher):
                obj.enable_caching()


def project_2d(features, method: str = "tsne", seed: int = 0, **kwargs) -> np.ndarray:
    """Project ``features [N, D]`` (e.g. ``model.embed(x)``) to ``[N, 2]`` points.

    ``method`` is "tsne" (``sklearn.manifold.TSNE``; ``perplexity``, default 30, is clipped
    to (N - 1) / 3 so that the 3 x perplexity neighbours it weighs exist) or "umap"
    (``umap.UMAP``; ``n_neighbors``, default 15, is clipped to N - 1). ``kwargs`` go to the
    estimator. The same ``seed`` gives the same points (UMAP then runs single-threaded, which
    its seeding requires).

    umap-learn is imported here, not with this module, because importing it and compiling its
    numba code costs seconds. Its jitted functions are cached on disk (see
    :func:`_cache_umap_jit`), so only the first process to use this umap version pays for the
    compile. ``NUMBA_CACHE_DIR`` is left as it is: a persistent cache folder by itself does
    not help, as umap's own functions are not cache-enabled.
    """
    x = to_numpy(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"project_2d needs at least 3 points, got {n}")
    x = x.astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        kwargs["perplexity"] = min(kwargs.get("perplexity", 30.0), (n - 1) / 3)
        estimator = TSNE(n_components=2, random_state=seed, **kwargs)
    elif method == "umap":
        import umap

        _cache_umap_jit()
        kwargs["n_neighbors"] = min(kwargs.get("n_neighbors", 15), n - 1)
        kwargs.setdefault("n_jobs", 1)  # a seeded UMAP is single-threaded; saying so avoids its warning
        estimator = umap.UMAP(n_components=2, random_state=seed, **kwargs)
    else:
        raise ValueError(f"unknown projection method {method!r}; expected 'tsne' or 'umap'")
    return np.asarray(estimator.fit_transform(x))


def _palette(k: int) -> list:
    """``k`` distinct colours: tab10 or tab20 where they suffice, else samples of turbo."""
    if k <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:k])
    if k <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:k])
    return list(matplotlib.colormaps["turbo"](np.linspace(0, 1, k)))


def _embedding_groups(labels, num_classes: int, top: int = 10,
                      label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which colour group every point falls in, by the rule of :func:`plot_embedding`.

    Returns ``(group [N], group_classes [G])``: ``group`` is an index into ``group_classes``
    (the class ids of the ``top`` most frequent labels, most frequent first; or ``[label]``
    alone), or -1 for "other". ``labels`` is multi-hot ``[N, C]`` (1 positive) or class ids ``[N]``.
    """
    labels = to_numpy(labels)
    if labels.ndim == 1:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"class ids must lie in [0, {num_classes}), got "
                             f"{labels.min()}..{labels.max()}")
        positive = np.eye(num_classes, dtype=bool)[labels.astype(np.int64)]
    elif labels.ndim == 2 and labels.shape[1] == num_classes:
        positive = labels == 1
    else:
        raise ValueError(f"labels must be multi-hot [N, {num_classes}] or class ids [N], "
                         f"got shape {labels.shape}")
    if label is not None:
        if not 0 <= label < num_classes:
            raise ValueError(f"label must lie in [0, {num_classes}), got {label}")
        return np.where(positive[:, label], 0, -1), np.array([label])
    frequency = positive.sum(0)
    # Stable sort: labels of equal frequency keep their vocabulary order.
    by_frequency = np.argsort(-frequency, kind="stable")[:top]
    group_classes = by_frequency[frequency[by_frequency] > 0]
    in_top = positive[:, group_classes]
    # The rarest of a point's labels among them: the most frequent would colour nearly every
    # point of a multi-label set alike (a generic label such as "sky" is on most images).
    rarest = len(group_classes) - 1 - in_top[:, ::-1].argmax(1)
    group = np.where(in_top.any(1), rarest, -1)
    return group, group_classes


def plot_embedding(points, labels, classes: list[str], ax=None, title: str | None = None,
                   top: int = 10, label: int | str | None = None):
    """Scatter ``points [N, 2]`` coloured by label; returns the Axes.

    ``labels`` is multi-hot ``[N, C]``: a point takes the colour of its rarest positive label
    among the ``top`` most frequent labels over all N points, so that the specific labels show
    where the generic ones (on most images) would colour nearly every point alike; points with
    none of them are "other" (grey). Or ``labels`` is class ids ``[N]`` (single-label data such
    as emotions): a point takes its class's colour, for the ``top`` most frequent classes.
    With ``label`` (an index or a name of ``classes``) the positives of that label alone are
    coloured, against the rest. Legend entries are class names, most frequent first, in a
    legend right of the Axes: draw with ``layout="constrained"`` (the default of a new
    figure) or save with ``bbox_inches="tight"`` so that it is not cut or overdrawn.
    """
    points = to_numpy(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got shape {points.shape}")
    if isinstance(label, str):
        if label not in classes:
            raise ValueError(f"label {label!r} is not among the classes")
        label = classes.index(label)
    group, group_classes = _embedding_groups(labels, len(classes), top, label)
    if len(group) != len(points):
        raise ValueError(f"{len(points)} points but {len(group)} rows of labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    size = max(2.0, min(20.0, 4000.0 / len(points)))
    other = group == -1
    if other.any():  # drawn first, underneath the named groups
        ax.scatter(*points[other].T, s=size, color=OTHER_COLOUR, label="other", linewidths=0)
    for g, (cls, colour) in enumerate(zip(group_classes, _palette(len(group_classes)))):
        if (group == g).any():  # a label that colours no point (its points took a rarer one) is not listed
            ax.scatter(*points[group == g].T, s=size, color=colour, label=classes[cls], linewidths=0)
    # t-SNE and UMAP axes have no unit and no meaning of their own: only distances matter.
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set(xlabel="projection axis 1", ylabel="projection axis 2")
    if title:
        ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    if other.any():  # "other" last in the legend
        handles, names = handles[1:] + handles[:1], names[1:] + names[:1]
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize="small", markerscale=max(1.0, 20.0 / size) ** 0.5)
    return ax
