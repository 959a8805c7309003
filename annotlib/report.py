"""Results tables from the runs of a profile: ours beside the papers', mean ± std over seeds.

Reads every ``runs/<paper>/<dataset>/<variant>/metrics.json`` (with its ``config.json``),
and P3's sweeps ``runs/p3/<dataset>/seed<k>/p<proportion>/<method>/metrics.json``, under a
profile folder and writes ``results.md`` and ``index.html`` beside ``runs/``.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .experiments import P0_RECIPE, P3_CLAIM, P3_METHODS, P3_RECIPE, p0_reported
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
    if metrics.get("runtime", {}).get("bf16_autocast"):  # runs from before it was recorded: unknown
        differs.append("bf16 autocast (paper: fp32)")
    # P0 picks the epoch on test and tunes thresholds on train.
    differs.append("epoch chosen on val (paper: on test)")
    if config["threshold_split"] != "train":
        differs.append(f"thresholds on {config['threshold_split']} (paper: train)")
    return ours, "; ".join(differs)


def p3_protocol(config: dict, metrics: dict) -> tuple[str, str]:
    """Our P3 protocol in words, and how it differs from P3's (ResNet-101 at 448 px, ImageNet
    pretrained; the rest of :data:`~annotlib.experiments.P3_RECIPE` is our assumption)."""
    ours = (f"{config['backbone']} {config['image_size']}px, {config['epochs']} ep, "
            f"{metrics['num_images']['train']} train imgs, epoch chosen on val (partial labels)")
    paper = P3_RECIPE
    differs = [f"{name} (paper: {theirs})" for name, mine, theirs in (
        ("backbone", config["backbone"], paper.backbone), ("image size", config["image_size"], paper.image_size))
        if mine != theirs]
    differs.append("pretrained weights (local file)" if config.get("weights_file")
                   else "random init (paper: ImageNet-pretrained)")
    if config["dataset"] == "synthetic":
        differs.append("synthetic data")
    differs.append("optimiser, schedule and epochs assumed (not in our sources)")
    return ours, "; ".join(differs)


def _notebook(run_dir: Path, profile_dir: Path) -> str:
    notebooks = sorted(run_dir.glob("*.ipynb"))
    return str(notebooks[0].relative_to(profile_dir)) if notebooks else ""


def collect_results(profile_dir: str | Path) -> pd.DataFrame:
    """One row per (run, threshold mode): config, test metrics, mAP, and its notebook if any.
    Rows of P3's sweeps also have ``method`` and ``proportion`` (the proportion of known
    training labels); their notebook is the sweep's, one folder up from the proportions."""
    profile_dir = Path(profile_dir)
    runs = profile_dir / "runs"
    rows = []
    for path in sorted([*runs.glob("*/*/*/metrics.json"), *runs.glob("*/*/*/*/*/metrics.json")]):
        run_dir = path.parent
        metrics, config = read_json(path), read_json(run_dir / "config.json")
        paper = path.relative_to(runs).parts[0]
        sweep = len(path.relative_to(runs).parts) == 6  # p3/<dataset>/seed<k>/p<prop>/<method>/
        ours, differs = (p3_protocol if sweep else protocol)(config, metrics)
        where = {"method": run_dir.name, "proportion": config["label_proportion"]} if sweep else {}
        notebook = _notebook(run_dir.parent.parent if sweep else run_dir, profile_dir)
        for mode, label in MODES.items():
            rows.append({"paper": paper, "dataset": config["dataset"], "loss": config["loss"],
                         "seed": config["seed"], **where, "protocol": ours, "differs from the paper in": differs,
                         "thresholds": label, **metrics["test"][mode], "mAP": metrics["test"]["mAP"],
                         "notebook": notebook})
    return pd.DataFrame(rows)


def _split(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one run per configuration, P3's sweeps)."""
    if "method" not in results:
        return results, results.iloc[0:0]
    sweep = results["method"].notna()
    return results[~sweep], results[sweep]


def _mean_std(values: pd.Series, digits: int) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: each metric as mean ± std over its seeds (sample std), the
    seeds run, the paper's numbers for the same dataset and loss, and links to the notebooks.
    P3's sweeps are left out (see :func:`p3_summary`)."""
    results = _split(results)[0]
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


PAPER_TITLES = {"p0": "P0: unsymmetrical loss with per-label MCC thresholds (Salar & Ahmadi 2023)",
                "p3": "P3: multi-label learning from partial labels (Durand, Mehrasa & Mori 2019)"}
NOTE = ("Test split; metrics at threshold 0.5 and at per-label MCC thresholds. Where a "
        "configuration ran with several seeds, each cell is mean ± sample std over them. "
        "The paper columns are its published numbers for the same dataset and loss.")
P3_NOTE = ("Test mAP of each method (rows) when a proportion p (columns) of every training "
           "and validation image's labels is kept known, the rest unknown; the test split stays "
           "fully labelled. Where a sweep ran with several seeds, each cell is mean ± sample std "
           "over them. The paper's claim: " + P3_CLAIM)
# The configuration fields that make two P3 runs the same experiment up to the seed.
P3_EXPERIMENT = ("dataset", "protocol", "differs from the paper in", "method", "proportion")


def _method_order(methods) -> list[str]:
    known = [m for m in P3_METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def p3_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, protocol, method, proportion) of P3's sweeps: test mAP as mean ±
    sample std over its seeds, the seeds, and the sweep notebooks that ran it."""
    sweeps = _split(results)[1]
    if sweeps.empty:
        return pd.DataFrame()
    sweeps = sweeps[sweeps["thresholds"] == MODES["at_0.5"]]  # mAP does not depend on thresholds
    rows = []
    for key, group in sweeps.groupby(list(P3_EXPERIMENT), sort=False):
        rows.append({**dict(zip(P3_EXPERIMENT, key)), "mAP": _mean_std(group["mAP"], 3),
                     "seeds": ", ".join(str(s) for s in sorted(group["seed"])),
                     "notebooks": sorted({n for n in group["notebook"] if n})})
    return pd.DataFrame(rows)


def _p3_sections(summary: pd.DataFrame):
    """Per (dataset, protocol): its heading, the mAP table (methods x p), the line under it
    and the notebook links (path, name)."""
    for (dataset, ours, differs), group in summary.groupby(list(P3_EXPERIMENT[:3]), sort=False):
        table = group.pivot(index="method", columns="proportion", values="mAP")
        table = table.reindex(index=_method_order(group["method"]), columns=sorted(group["proportion"].unique()))
        table.columns = [f"p = {p:g}" for p in table.columns]
        seeds = sorted({int(s) for cell in group["seeds"] for s in cell.split(", ")})
        line = (f"Protocol: {ours}; seeds {', '.join(map(str, seeds))}. "
                f"Differs from the paper in: {differs}.")
        notebooks = sorted({n for links in group["notebooks"] for n in links})
        yield dataset, table.fillna("–"), line, [(n, Path(n).parent.name) for n in notebooks]


def _p3_markdown(summary: pd.DataFrame) -> list[str]:
    md = [f"## {PAPER_TITLES['p3']}", "", P3_NOTE, ""]
    for dataset, table, line, notebooks in _p3_sections(summary):
        md += [f"### {dataset}", "", "| method | " + " | ".join(table.columns) + " |",
               "|" + "---|" * (len(table.columns) + 1)]
        md += [f"| {method} | " + " | ".join(row) + " |" for method, row in table.iterrows()]
        links = ", ".join(f"[{name}]({n})" for n, name in notebooks) or "–"
        md += ["", f"{line} Notebooks: {links}.", ""]
    return md


def _p3_html(summary: pd.DataFrame) -> str:
    parts = [f"<h2>{html.escape(PAPER_TITLES['p3'])}</h2>", f"<p>{html.escape(P3_NOTE)}</p>"]
    for dataset, table, line, notebooks in _p3_sections(summary):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ("method", *table.columns))
        body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (method, *row)) + "</tr>"
                         for method, row in table.iterrows())
        links = ", ".join(f'<a href="{html.escape(n)}">{html.escape(name)}</a>' for n, name in notebooks) or "–"
        parts.append(f"<h3>{html.escape(dataset)}</h3>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n"
                     f"<p>{html.escape(line)} Notebooks: {links}.</p>")
    return "\n".join(parts)


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


def p3_run_table(results: pd.DataFrame, metrics=("mAP", "CF1", "CF1 (tuned)")) -> pd.DataFrame:
    """One P3 sweep's test ``metrics`` (rows of
    :func:`~annotlib.experiments.run_partial_labels`): methods as rows, (metric, p) as columns."""
    table = results.pivot_table(index="method", columns="proportion", values=list(metrics), aggfunc="mean")
    return table.reindex(index=_method_order(results["method"]))[list(metrics)]


def plot_summary(results: pd.DataFrame, metric: str = "CF1"):
    """Bars of ``metric`` (mean over seeds, sample-std error bars) per loss, one panel per
    (paper, dataset), at 0.5 and tuned thresholds side by side; for P3's sweeps, test mAP
    against the proportion of known labels, one curve per method."""
    import matplotlib.pyplot as plt

    from .viz import plot_metric_vs_proportion

    flat, sweeps = _split(results)
    panels = [(key, group, False) for key, group in flat.groupby(["paper", "dataset"], sort=False)]
    panels += [(key, group[group["thresholds"] == MODES["at_0.5"]], True)
               for key, group in sweeps.groupby(["paper", "dataset"], sort=False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, ((paper, dataset), group, sweep) in zip(axes[0], panels):
        if sweep:
            order = {m: i for i, m in enumerate(_method_order(group["method"]))}
            plot_metric_vs_proportion(group.sort_values("method", key=lambda m: m.map(order), kind="stable"),
                                      "mAP", ax=ax)
            ax.set_title(f"{paper}, {dataset}: test mAP")
            continue
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
        raise FileNotFoundError(f"{profile_dir}: no runs/*/*/*/metrics.json (nor P3's "
                                f"runs/p3/*/*/*/*/metrics.json) to report")
    summary = summarize(results)
    md, page = [f"# {title}", "", NOTE, ""], []
    for paper, table in (summary.groupby("paper", sort=False) if not summary.empty else []):
        name = PAPER_TITLES.get(paper, paper)
        md += [f"## {name}", "", _markdown(table), ""]
        page.append(f"<h2>{html.escape(name)}</h2>\n{_html(table)}")
    sweeps = p3_summary(results)
    if not sweeps.empty:
        md += _p3_markdown(sweeps)
        page.append(_p3_html(sweeps))
    atomic_write_text(profile_dir / "results.md", "\n".join(md))
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    atomic_write_text(profile_dir / "index.html",
                      f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
                      f"<p>{html.escape(NOTE)}</p>\n" + "\n".join(page) + "\n</body></html>\n")
    return summary
