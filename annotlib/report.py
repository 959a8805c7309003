"""Results tables from the runs of a profile: ours beside the papers', mean ± std over seeds.

Reads every ``metrics.json`` under ``<profile>/runs/`` (whatever its depth: one schema for
every paper) and writes ``results.md`` and ``index.html`` beside ``runs/``. What each
paper's table shows (its row keys, metric columns, published numbers, differences from the
paper) comes from the papers registry.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .io import atomic_write_text, read_json
from .papers import PAPERS

NOTE = ("Test split. Where a configuration ran with several seeds, each cell is mean ± sample std "
        "over them (n = seeds). Metric names: CP/CR/CF1 per-class precision, recall and F1; OP/OR/OF1 "
        "overall; N+ the labels with at least one true positive; @0.5 at threshold 0.5, @tuned at "
        "per-label MCC thresholds. 'paper' columns are its published numbers.")


def _notebook(metrics_path: Path, runs: Path) -> str:
    """The executed notebook nearest above a run's folder (a sweep's notebook is a level up)."""
    for folder in metrics_path.parents:
        if folder == runs:
            break
        notebooks = sorted(folder.glob("*.ipynb"))
        if notebooks:
            return str(notebooks[0].relative_to(runs.parent))
    return ""


def collect_results(profile_dir: str | Path) -> pd.DataFrame:
    """One row per run: paper, dataset, variant, seed, the paper's row keys, every test
    metric by name, protocol, differences from the paper and its notebook."""
    runs = Path(profile_dir) / "runs"
    rows = []
    for path in sorted(runs.rglob("metrics.json")):
        metrics = read_json(path)
        if metrics.get("schema") is None:
            raise ValueError(f"{path}: written before metrics.json had a schema; rerun it into a new "
                             "--reports folder")
        paper = PAPERS[metrics["paper"]]
        rows.append({"paper": paper.key, "dataset": metrics["dataset"], "variant": metrics["variant"],
                     "seed": metrics["config"]["seed"], **paper.row(metrics), **metrics["test"],
                     "protocol": "; ".join(metrics["protocol"]),
                     "differences": "; ".join(paper.differences(metrics)),
                     "labels": metrics.get("calibration", {}).get("labels"),
                     "notebook": _notebook(path, runs)})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f} (n={len(values)})"


def _digits(column: str) -> int:
    return 0 if column.startswith("N+") else 3


def tables(results: pd.DataFrame):
    """Per (paper, dataset, protocol, differences): the heading facts and a table, one row
    per configuration (the paper's row keys), each metric as mean ± std over its seeds,
    beside the paper's published numbers."""
    for (key, dataset, protocol, differences), group in results.groupby(
            ["paper", "dataset", "protocol", "differences"], sort=False):
        paper = PAPERS[key]
        keys = list(paper.row_keys)
        rows = []
        for values, runs in group.groupby(keys, sort=False):
            row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            published = paper.reported(dataset, row)
            for column in paper.columns:
                row[column] = _mean_std(runs[column], _digits(column)) if column in runs else "–"
                if column in published:
                    row[f"paper {column}"] = f"{published[column]:.{_digits(column)}f}"
            row["seeds"] = len(runs)
            row["notebooks"] = sorted({n for n in runs["notebook"] if n})
            rows.append(row)
        table = pd.DataFrame(rows)
        labels = group["labels"].dropna()
        yield {"paper": paper, "dataset": dataset, "protocol": protocol, "differences": differences,
               "labels": int(labels.iloc[0]) if len(labels) else None, "table": table}


def _columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c != "notebooks"]


def _section_lines(section) -> list[str]:
    lines = [f"Protocol: {section['protocol']}."]
    if section["labels"]:
        lines.append(f"N+ counts out of {section['labels']} labels.")
    lines.append(f"Differs from the paper in: {section['differences']}.")
    return lines


def _markdown(section) -> list[str]:
    table, columns = section["table"], _columns(section["table"])
    md = [f"### {section['dataset']}", "", *_section_lines(section), "",
          "| " + " | ".join(columns) + " | notebooks |", "|" + "---|" * (len(columns) + 1)]
    for _, row in table.iterrows():
        links = ", ".join(f"[{Path(n).parent.name}]({n})" for n in row["notebooks"]) or "–"
        md.append("| " + " | ".join(str(row[c]) for c in columns) + f" | {links} |")
    return md + [""]


def _html(section) -> str:
    table, columns = section["table"], _columns(section["table"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*columns, "notebooks"))
    body = []
    for _, row in table.iterrows():
        cells = "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns)
        links = ", ".join(f'<a href="{html.escape(n)}">{html.escape(Path(n).parent.name)}</a>'
                          for n in row["notebooks"])
        body.append(f"<tr>{cells}<td>{links}</td></tr>")
    facts = "".join(f"<p>{html.escape(line)}</p>" for line in _section_lines(section))
    return (f"<h3>{html.escape(section['dataset'])}</h3>{facts}\n<table>\n<tr>{head}</tr>\n"
            + "\n".join(body) + "\n</table>")


def plot_summary(results: pd.DataFrame):
    """Per (paper, dataset), the first metric column of the paper's table per configuration:
    bars (mean over seeds, sample-std error bars where there are several seeds)."""
    import matplotlib.pyplot as plt

    panels = list(results.groupby(["paper", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, ((key, dataset), group) in zip(axes[0], panels):
        paper = PAPERS[key]
        keys = list(paper.row_keys)
        metric = paper.columns[0] if key != "p0" else "CF1@tuned"
        stats = group.groupby(keys, sort=False)[metric].agg(["mean", "std", "count"])
        labels = [", ".join(str(v) for v in (k if isinstance(k, tuple) else (k,))) for k in stats.index]
        errors = stats["std"].where(stats["count"] > 1)
        ax.bar(labels, stats["mean"], yerr=errors.fillna(0), capsize=3 if errors.notna().any() else 0)
        ax.set_title(f"{key}, {dataset}")
        ax.set_ylabel(f"test {metric}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def write_report(profile_dir: str | Path, title: str | None = None) -> list[dict]:
    """Write ``results.md`` and ``index.html`` into ``profile_dir``; returns the sections."""
    profile_dir = Path(profile_dir)
    title = title or f"annotlib results: {profile_dir.name}"
    results = collect_results(profile_dir)
    if results.empty:
        raise FileNotFoundError(f"{profile_dir}: no runs/**/metrics.json to report")
    sections = list(tables(results))
    md, page = [f"# {title}", "", NOTE, ""], []
    for key in dict.fromkeys(s["paper"].key for s in sections):
        paper = PAPERS[key]
        claims = "; ".join(paper.claims)
        md += [f"## {paper.title}", "", f"The paper's claims: {claims}.", ""]
        page.append(f"<h2>{html.escape(paper.title)}</h2><p>{html.escape('The paper’s claims: ' + claims)}.</p>")
        for section in (s for s in sections if s["paper"].key == key):
            md += _markdown(section)
            page.append(_html(section))
    atomic_write_text(profile_dir / "results.md", "\n".join(md))
    style = ("body{font-family:sans-serif;margin:2em;max-width:80em} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    atomic_write_text(profile_dir / "index.html",
                      f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
                      f"<p>{html.escape(NOTE)}</p>\n" + "\n".join(page) + "\n</body></html>\n")
    return sections


def run_table(metrics: dict) -> pd.DataFrame:
    """One run's test metrics (its paper's columns) with the paper's published numbers below."""
    paper = PAPERS[metrics["paper"]]
    rows = {"ours": {c: metrics["test"].get(c) for c in paper.columns}}
    published = paper.reported(metrics["dataset"], paper.row(metrics))
    if published:
        rows["paper"] = {c: published.get(c) for c in paper.columns}
    return pd.DataFrame.from_dict(rows, orient="index")
