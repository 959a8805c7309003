"""Results tables from the runs of a profile: ours beside the papers', mean ± std over seeds.

Reads every ``runs/<paper>/<dataset>/<variant>/metrics.json`` (with its ``config.json``)
under a profile folder and writes ``results.md`` and ``index.html`` beside ``runs/``.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .experiments import P0_RECIPE, p0_reported
from .io import atomic_write_text, read_json

METRICS = ("CP", "CR", "CF1", "OP", "OR", "OF1", "N+")
MODES = {"at_0.5": "0.5", "tuned": "tuned"}
PAPER_COLUMNS = ("CP", "CR", "CF1", "N+")
# The configuration fields that make two runs the same experiment up to the seed.
EXPERIMENT = ("paper", "dataset", "loss", "protocol", "differs from the paper in", "thresholds")


def protocol(config: dict, metrics: dict) -> tuple[str, str]:
    """Our protocol in words, and how it differs from the paper's recipe."""
    ours = (f"{config['backbone']} {config['image_size']}px, {config['epochs']} ep, "
            f"{metrics['num_images']['train']} train imgs, epoch chosen on val, "
            f"thresholds tuned on {config['threshold_split']}")
    paper = P0_RECIPE
    differs = [name for name, mine, theirs in (
        ("backbone", config["backbone"], paper.backbone), ("image size", config["image_size"], paper.image_size),
        ("epochs", config["epochs"], paper.epochs), ("batch", config["batch_size"], paper.batch_size),
        ("lr", config["lr"], paper.lr)) if mine != theirs]
    if config.get("weights_file"):
        differs.append("pretrained weights (local file)")
    if config["dataset"] == "synthetic":
        differs.append("synthetic data")
    # P0 picks the epoch on test and tunes thresholds on train.
    differs.append("epoch chosen on val (paper: on test)")
    if config["threshold_split"] != "train":
        differs.append(f"thresholds on {config['threshold_split']} (paper: train)")
    return ours, "; ".join(differs)


def collect_results(profile_dir: str | Path) -> pd.DataFrame:
    """One row per (run, threshold mode): config, test metrics, mAP, and its notebook if any."""
    profile_dir = Path(profile_dir)
    rows = []
    for path in sorted((profile_dir / "runs").glob("*/*/*/metrics.json")):
        run_dir = path.parent
        metrics, config = read_json(path), read_json(run_dir / "config.json")
        paper = run_dir.parent.parent.name
        ours, differs = protocol(config, metrics)
        notebooks = sorted(run_dir.glob("*.ipynb"))
        for mode, label in MODES.items():
            rows.append({"paper": paper, "dataset": config["dataset"], "loss": config["loss"],
                         "seed": config["seed"], "protocol": ours, "differs from the paper in": differs,
                         "thresholds": label, **metrics["test"][mode], "mAP": metrics["test"]["mAP"],
                         "notebook": str(notebooks[0].relative_to(profile_dir)) if notebooks else ""})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, digits: int) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: each metric as mean ± std over its seeds (sample std), the
    seeds run, the paper's numbers for the same dataset and loss, and links to the notebooks."""
    rows = []
    for key, group in results.groupby(list(EXPERIMENT), sort=False):
        row = dict(zip(EXPERIMENT, key))
        for name in (*METRICS, "mAP"):
            row[name] = _mean_std(group[name], 0 if name == "N+" else 3)
        row["seeds"] = ", ".join(str(s) for s in sorted(group["seed"]))
        reported = (p0_reported(row["dataset"], row["loss"]) or {}) if row["paper"] == "p0" else {}
        mode = {label: mode for mode, label in MODES.items()}[row["thresholds"]]
        for name in PAPER_COLUMNS:
            value = reported.get(mode, {}).get(name)
            row[f"paper {name}"] = "–" if value is None else (f"{value:.0f}" if name == "N+" else f"{value:.3f}")
        row["notebooks"] = [n for n in group["notebook"] if n]
        rows.append(row)
    return pd.DataFrame(rows)


TABLE_COLUMNS = ("dataset", "loss", "thresholds", *METRICS, "mAP", *(f"paper {c}" for c in PAPER_COLUMNS),
                 "seeds", "protocol", "differs from the paper in")


def _markdown(summary: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " | notebooks |", "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for _, row in summary.iterrows():
        links = ", ".join(f"[{Path(n).parent.name}]({n})" for n in row["notebooks"]) or "–"
        lines.append("| " + " | ".join(str(row[c]) for c in TABLE_COLUMNS) + f" | {links} |")
    return "\n".join(lines)


def _html(summary: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*TABLE_COLUMNS, "notebooks"))
    body = []
    for _, row in summary.iterrows():
        cells = "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in TABLE_COLUMNS)
        links = ", ".join(f'<a href="{html.escape(n)}">{html.escape(Path(n).parent.name)}</a>'
                          for n in row["notebooks"])
        body.append(f"<tr>{cells}<td>{links}</td></tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


PAPER_TITLES = {"p0": "P0: unsymmetrical loss with per-label MCC thresholds (Salar & Ahmadi 2023)"}
NOTE = ("Test split; metrics at threshold 0.5 and at per-label MCC thresholds. Where a "
        "configuration ran with several seeds, each cell is mean ± sample std over them. "
        "The paper columns are its published numbers for the same dataset and loss.")


def p0_run_table(metrics: dict) -> pd.DataFrame:
    """One run's test metrics at 0.5 and at tuned thresholds, with P0's published rows for
    the same dataset and loss below them where P0 has them."""
    rows = {f"ours, {label}": {**metrics["test"][mode], "mAP": metrics["test"]["mAP"]}
            for mode, label in MODES.items()}
    for mode, label in MODES.items():
        reported = (p0_reported(metrics["dataset"], metrics["loss"]) or {}).get(mode)
        if reported:
            rows[f"P0, {label}"] = reported
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=[*METRICS, "mAP"])


def plot_summary(results: pd.DataFrame, metric: str = "CF1"):
    """Bars of ``metric`` (mean over seeds, sample-std error bars) per loss, one panel per
    (paper, dataset), at 0.5 and tuned thresholds side by side."""
    import matplotlib.pyplot as plt

    panels = list(results.groupby(["paper", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, ((paper, dataset), group) in zip(axes[0], panels):
        stats = group.groupby(["loss", "thresholds"], sort=False)[metric].agg(["mean", "std"]).unstack()
        stats["mean"].plot.bar(ax=ax, yerr=stats["std"].fillna(0), rot=0, capsize=3)
        ax.set_title(f"{paper}, {dataset}: test {metric}")
        ax.set_xlabel("")
        ax.legend(title="thresholds")
    fig.tight_layout()
    return fig


def write_report(profile_dir: str | Path, title: str | None = None) -> pd.DataFrame:
    """Write ``results.md`` and ``index.html`` into ``profile_dir``; returns the summary."""
    profile_dir = Path(profile_dir)
    title = title or f"annotlib results: {profile_dir.name}"
    results = collect_results(profile_dir)
    if results.empty:
        raise FileNotFoundError(f"{profile_dir}: no runs/*/*/*/metrics.json to report")
    summary = summarize(results)
    md, page = [f"# {title}", "", NOTE, ""], []
    for paper, table in summary.groupby("paper", sort=False):
        name = PAPER_TITLES.get(paper, paper)
        md += [f"## {name}", "", _markdown(table), ""]
        page.append(f"<h2>{html.escape(name)}</h2>\n{_html(table)}")
    atomic_write_text(profile_dir / "results.md", "\n".join(md))
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    atomic_write_text(profile_dir / "index.html",
                      f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
                      f"<p>{html.escape(NOTE)}</p>\n" + "\n".join(page) + "\n</body></html>\n")
    return summary
