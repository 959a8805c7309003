"""Results report of a profile: ours beside the papers', mean ± std over seeds, with figures.

Reads every ``metrics.json`` under ``<profile>/runs/`` (whatever its depth: one schema for
every paper) and writes beside ``runs/``: ``results.md`` (the tables), ``summary.png`` and
``index.html`` (the tables, the summary figure, each run's figures and notebook, and every
metric defined once), each opening with the papers' claims tested on these runs
(:func:`claim_tables`). Each run's executed notebook is rendered to HTML beside its ``.ipynb``,
readable in a browser without Jupyter or a network. What each paper's table shows (its row
keys, metric columns, published numbers, differences from the paper) comes from the papers
registry; every link is relative to the profile folder, so the folder can be shared as it is.
"""

from __future__ import annotations

import functools
import html
import math
import warnings
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from .io import atomic_write_text, read_json
from .papers import PAPERS, Claim
from .stats import (
    TEST_OUTPUTS,
    SeedMean,
    format_mean_std,
    paired_bootstrap,
    read_test_outputs,
    verdict,
    weighted_metric,
)

NOTE = ("Test split. Each cell is our number, the mean ± sample std over seeds where a "
        "configuration ran with several (n: how many seeds), then the paper's published number "
        "where it has one. A column no run of a table measured is left out and named below it.")

# The metric of a column is the part before "@"; the part after says how labels were chosen.
DEFINITIONS = {
    "CP": "per-class precision: the mean over labels c of TP_c / Pred_c, with TP_c the test "
          "images where label c is predicted and true, Pred_c where it is predicted, GT_c where it "
          "is true (a ratio with a zero denominator is 0)",
    "CR": "per-class recall: the mean over labels of TP_c / GT_c",
    "CF1": "2·CP·CR / (CP + CR), the harmonic mean of CP and CR (not the mean of per-label F1)",
    "OP": "overall precision: Σ_c TP_c / Σ_c Pred_c, every predicted (image, label) pair alike",
    "OR": "overall recall: Σ_c TP_c / Σ_c GT_c",
    "OF1": "2·OP·OR / (OP + OR)",
    "N+": "how many labels have at least one true positive on the test split; out of how many "
          "labels is in the column's heading",
    "mAP": "mean average precision. Labels (P0, P1, P3, P4): the mean over labels of the label's "
           "AP, the test images ranked by its score. Retrieval (P2): the mean over queries of AP, "
           "every test image querying the others by embedding distance, relevant where the "
           "category is the query's",
    "accuracy": "the share of test images whose predicted category is the true one",
    "polarity_accuracy": "the share of test images whose predicted emotion has the true "
                         "emotion's polarity (positive or negative)",
    "P@10": "retrieval precision at 10: the share of a query's 10 nearest test images that have "
            "its category, mean over queries",
    "nDCG": "normalised discounted cumulative gain of the whole retrieval ranking, gain 2 for the "
            "query's emotion, 1 for its polarity, 0 otherwise (same category 1 where categories "
            "have no polarity), mean over queries",
    "BLEU-4": "corpus-level BLEU with 1- to 4-grams of the generated caption against the image's "
              "reference captions (COCO caption evaluation)",
    "METEOR": "METEOR 1.5 of the generated caption against the references (COCO caption "
              "evaluation; needs Java)",
    "CIDEr-D": "consensus of the generated caption's TF-IDF-weighted n-grams with the references "
               "(clipped counts, length penalty, ×10; COCO caption evaluation)",
    "pointing_game_cam": "the share of test images, of those with a box of the predicted class, "
                         "where the class's CAM peaks inside such a box",
    "pointing_game_attention": "the same for the decoder's attention pooled over the caption",
    "agreement_kl": "L_dis as training computes it (the run's divergence and CAM normalisation), "
                    "on the decoded test captions: their attention averaged over the caption's steps "
                    "against the mean CAM of the image's true classes (or, with class-word steps, each "
                    "true class's CAM against the steps naming it), images without a true class left "
                    "out; lower: the two maps agree more",
}
QUALIFIERS = {
    "0.5": "labels predicted where their score is at least 0.5",
    "tuned": "labels predicted at per-label thresholds of highest MCC on the split the protocol "
             "names",
    "decoded": "the label set decoded by beam search",
}
# Where an F1 is shown, the precision and recall it is made of are defined too.
DEFINED_WITH = {"CF1": ("CP", "CR"), "OF1": ("OP", "OR")}

# A run figure's caption by file stem, in the order shown; other PNGs follow by name.
FIGURES = {
    "cams": "Class activation maps of the predicted labels on test images",
    "step_cams": "Grad-CAM of each decoded label, step by step along the decoded sequence",
    "attention_joint_dis": "Each generated word's attention beside the predicted class's CAM "
                           "(joint training with L_dis)",
    "attention_joint": "Each generated word's attention beside the predicted class's CAM "
                       "(joint training without L_dis)",
    "embeddings": "Test-image embeddings projected to 2-D",
    "map_vs_proportion": "Test mAP and CF1@0.5 against the proportion of known labels",
    "decoded": "Decoded label sequences of test images beside the truth",
    "captions": "Generated captions of test images beside a reference",
    "retrieval": "Test queries and their five nearest test images",
    "confusion": "Confusion matrix of the test categories (rows: true, normalised)",
    "f1_vs_frequency": "Per-label test F1 against the label's training frequency",
    "learning_curves": "Learning curves: losses and validation metrics per epoch",
}
SUMMARY_CAPTION = ("Per paper and dataset, one metric of its table per configuration: our test "
                   "number (bar, mean over seeds, error bar the sample std where several) and "
                   "the paper's (black mark) where published.")


def _notebook(metrics_path: Path, runs: Path) -> str:
    """The executed notebook nearest above a run's folder (a sweep's notebook is a level up)."""
    for folder in metrics_path.parents:
        if folder == runs:
            break
        notebooks = sorted(folder.glob("*.ipynb"))
        if notebooks:
            return notebooks[0].relative_to(runs.parent).as_posix()
    return ""


def collect_results(profile_dir: str | Path) -> pd.DataFrame:
    """One row per run: paper, dataset, variant, seed, the paper's row keys, every test
    metric by name, protocol, differences from the paper, its notebook, its folder (``run``),
    backbone, image size and epochs, and its ``test_outputs.npz`` ("" where it has none)."""
    runs = Path(profile_dir) / "runs"
    rows = []
    for path in sorted(runs.rglob("metrics.json")):
        metrics = read_json(path)
        if metrics.get("schema") is None:
            raise ValueError(f"{path}: written before metrics.json had a schema; rerun it into a "
                             "new --reports folder")
        paper = PAPERS[metrics["paper"]]
        rows.append({"paper": paper.key, "dataset": metrics["dataset"],
                     "variant": metrics["variant"], "seed": metrics["config"]["seed"],
                     **paper.row(metrics), **metrics["test"],
                     "protocol": "; ".join(metrics["protocol"]),
                     "differences": "; ".join(paper.differences(metrics)),
                     "labels": metrics.get("calibration", {}).get("labels"),
                     "notebook": _notebook(path, runs),
                     "run": path.parent.relative_to(runs.parent).as_posix(),
                     **{key: metrics["config"][key] for key in ("backbone", "image_size", "epochs")},
                     "outputs": str(path.parent / TEST_OUTPUTS)
                     if (path.parent / TEST_OUTPUTS).exists() else ""})
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _digits(column: str) -> int:
    return 0 if column.startswith("N+") else 3


def _label_count(results: pd.DataFrame, group: pd.DataFrame) -> int | None:
    # A task without calibration (P1's decoder) records no label count: a run of the same
    # paper on the same dataset has the same labels.
    labels = group["labels"].dropna()
    if labels.empty:
        same = results[(results["paper"] == group["paper"].iloc[0])
                       & (results["dataset"] == group["dataset"].iloc[0])]
        labels = same["labels"].dropna()
    return int(labels.iloc[0]) if len(labels) else None


def tables(results: pd.DataFrame):
    """Per (paper, dataset, protocol, differences): the heading facts and a table, one row
    per configuration (the paper's row keys), each metric as mean ± std over its seeds
    (``seeds``: how many), beside the paper's published numbers (``paper <metric>``)."""
    for (key, dataset, protocol, differences), group in results.groupby(
            ["paper", "dataset", "protocol", "differences"], sort=False):
        paper = PAPERS[key]
        keys = list(paper.row_keys)
        rows = []
        for values, runs in group.groupby(keys, sort=False):
            row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            published = paper.reported(dataset, row)
            for column in paper.columns:
                digits = _digits(column)
                row[column] = _mean_std(runs[column], digits) if column in runs else "–"
                if column in published:
                    row[f"paper {column}"] = f"{published[column]:.{digits}f}"
            row["seeds"] = len(runs)
            row["notebooks"] = sorted({n for n in runs["notebook"] if n})
            rows.append(row)
        yield {"paper": paper, "dataset": dataset, "protocol": protocol,
               "differences": differences, "labels": _label_count(results, group),
               "table": pd.DataFrame(rows)}


# -- claims ------------------------------------------------------------------------------

BOOTSTRAP = {"n_resamples": 1000, "seed": 0, "confidence": 0.95}
CLAIMS_NOTE = (
    "Each claim of a paper tested on this profile's runs, per setting (dataset; profile: "
    "backbone, image size, epochs; the row keys the claim leaves open). Each side: the test "
    "metric's mean ± sample std over seeds (n). Difference: the claimed-better side's mean "
    "minus the other's. Interval: 95% paired bootstrap of that difference over the test "
    f"images ({BOOTSTRAP['n_resamples']} resamples, percentile interval): each resample draws "
    "the same images for both sides and for every seed; seeds are paired by seed id and their "
    "differences pooled (averaged) on each resample, so the interval reflects which test "
    "images were drawn, not seed-to-seed variation (the std shows that). Retrieval mAP "
    "resamples the queries; each still ranks the whole test split. Verdict: reproduced where "
    "the whole interval is on the claimed side of 0, not reproduced where it is on the "
    "other side, inconclusive where it contains 0.")
# Computed on the whole test corpus by the COCO caption evaluation, so no per-image values
# add up to them: why such a claim has mean ± std and no interval.
NO_INTERVAL = {name: "corpus-level caption metric (n-gram statistics and CIDEr-D's document "
                     "frequencies pooled over the test set); not resampled"
               for name in ("BLEU-4", "METEOR", "CIDEr-D")}
# What a claim compares within: runs of one dataset and training setting.
SETTING_KEYS = ("dataset", "backbone", "image_size", "epochs", "differences")


def _load_metric(path: str, column: str):
    """A run's weighted ``column`` (None where its test outputs lack it) and test-image digest."""
    outputs = read_test_outputs(path)
    return weighted_metric(outputs, column), str(outputs["images"])


def _side(runs: pd.DataFrame, values: dict) -> pd.DataFrame:
    """The runs whose row keys have ``values`` (all runs for ``{}``)."""
    keep = pd.Series(True, index=runs.index)
    for key, value in values.items():
        keep &= runs[key] == value
    return runs[keep]


def _seed_metrics(runs: pd.DataFrame, column: str, seeds: list, load):
    """Per seed, the run's weighted ``column`` and test-image digest; or why there is none."""
    metrics, digests = [], []
    for seed in seeds:
        run = runs[runs["seed"] == seed]
        if len(run) > 1:
            raise ValueError(f"{', '.join(run['run'])}: several runs of one configuration and seed "
                             "in one setting; keep one of them in this reports folder")
        folder, path = run["run"].iloc[0], run["outputs"].iloc[0]
        if not path:
            return (f"{folder} has no {TEST_OUTPUTS} (run before per-image outputs were kept, "
                    "or its task keeps none)")
        metric, digest = load(path, column)
        if metric is None:
            return f"{folder}/{TEST_OUTPUTS} keeps no per-image values for {column}"
        metrics.append(metric)
        digests.append(digest)
    return metrics, digests


def _interval(a: pd.DataFrame, b: pd.DataFrame, pair: tuple[str, str], direction: int,
              load) -> tuple[object, str]:
    """The paired bootstrap of ``a``'s ``pair[0]`` minus ``b``'s ``pair[1]`` over the seeds
    both sides ran, and its verdict; or (None, why there is no interval)."""
    if pair[0] in NO_INTERVAL:
        return None, NO_INTERVAL[pair[0]]
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    if not seeds:
        return None, "no seed ran on both sides"
    sides = [_seed_metrics(runs, column, seeds, load) for runs, column in zip((a, b), pair)]
    why = next((side for side in sides if isinstance(side, str)), None)
    if why:
        return None, why
    if len({d for _, digests in sides for d in digests}) > 1:
        return None, "these runs were tested on different images"
    result = paired_bootstrap(SeedMean(sides[0][0]), SeedMean(sides[1][0]), **BOOTSTRAP)
    if not (math.isfinite(result.low) and math.isfinite(result.high)):
        return None, "the metric is undefined on some resamples (too few test images)"
    return result, verdict(result.interval, direction)


def _label(values: dict, column: str) -> str:
    return ", ".join(str(v) for v in values.values()) or column


def _comparison(claim: Claim, pair: tuple[str, str], than: dict, a: pd.DataFrame, b: pd.DataFrame,
                load) -> dict:
    """One row of a claims table, from the runs of each side in one setting."""
    digits = _digits(pair[0])
    cells, values = [], []
    for runs, side, column in ((a, claim.better, pair[0]), (b, than, pair[1])):
        measured = runs[column].dropna() if column in runs else pd.Series(dtype=float)
        state = ("not run" if runs.empty else "not measured" if measured.empty
                 else format_mean_std(list(measured), digits))
        cells.append(f"{_label(side, column)}: {state}")
        values.append(measured)
    row = {"ours": cells[0], "against": cells[1], "difference": "–", "interval": "–"}
    if a.empty or b.empty:
        return {**row, "verdict": "not run"}
    if values[0].empty or values[1].empty:
        return {**row, "verdict": "not measured"}
    row["difference"] = f"{values[0].mean() - values[1].mean():+.{digits}f}"
    result, outcome = _interval(a, b, pair, claim.direction, load)
    if result is None:
        return {**row, "verdict": f"no interval: {outcome}"}
    seeds = len(set(a["seed"]) & set(b["seed"]))
    row["interval"] = (f"[{result.low:+.{digits}f}, {result.high:+.{digits}f}] "
                       f"({seeds} seed{'s' * (seeds > 1)})")
    return {**row, "verdict": outcome}


def _shared_differences(runs: pd.DataFrame) -> dict[str, set[str]]:
    """Per dataset, the differences from the paper that all its runs share: the others tell
    its settings apart (bf16 or not, thresholds tuned on train or val)."""
    return {dataset: set.intersection(*(set(d.split("; ")) for d in group["differences"]))
            for dataset, group in runs.groupby("dataset", sort=False)}


def claim_tables(results: pd.DataFrame, profile: str) -> dict[str, list[dict]]:
    """Per paper with runs, one row per (claim, metric, compared row, setting): ``claim``
    (C1, C2, ... in the paper's order), dataset, setting, metric, each side's mean ± std over
    seeds (``ours``, ``against``), ``difference``, ``interval`` (95% paired bootstrap) and
    ``verdict``. A comparison that no setting ran is one "not run" row."""
    # The last few runs' metrics kept: a claim compares one run with several, and a COCO-sized
    # mAP holds tens of MB.
    load, found_tables = functools.lru_cache(maxsize=16)(_load_metric), {}
    for key in dict.fromkeys(results["paper"]):
        paper, runs = PAPERS[key], results[results["paper"] == key]
        rows, shared = [], _shared_differences(runs)
        for number, claim in enumerate(paper.claims, 1):
            named = {k for side in (claim.better, *claim.than) for k in side}
            open_keys = [k for k in paper.row_keys if k not in named]
            groups = list(runs.groupby([*SETTING_KEYS, *open_keys], sort=False, dropna=False))
            for pair in claim.pairs():
                metric = pair[0] if pair[0] == pair[1] else f"{pair[0]} vs {pair[1]}"
                for than in claim.than:
                    found = []
                    for setting, group in groups:
                        a, b = _side(group, claim.better), _side(group, than)
                        if a.empty and b.empty:
                            continue
                        dataset, backbone, size, epochs, differences, *open_values = setting
                        where = f"{profile}: {backbone}, {size} px, {epochs} epoch{'s' * (epochs != 1)}"
                        where += "".join(f"; {k}={v}" for k, v in zip(open_keys, open_values))
                        where += "".join(f"; {item}" for item in differences.split("; ")
                                         if item not in shared[dataset])
                        found.append({"dataset": dataset, "setting": where,
                                      **_comparison(claim, pair, than, a, b, load)})
                    if not found:
                        none = runs.iloc[:0]
                        found = [{"dataset": "–", "setting": "–",
                                  **_comparison(claim, pair, than, none, none, load)}]
                    rows += [{"claim": f"C{number}", "metric": metric, **row} for row in found]
        found_tables[key] = rows
    return found_tables


CLAIM_HEADS = {"claim": "claim", "dataset": "dataset", "setting": "setting", "metric": "metric",
               "ours": "claimed better: mean ± std (n)", "against": "compared with",
               "difference": "difference", "interval": "95% interval", "verdict": "verdict"}


def _claim_list(paper) -> list[tuple[str, str, str]]:
    """(numbers, text, setting) of each distinct claim of ``paper``: a claim tested on two sets
    of columns (P4's joint training on captions and on classes) is listed once as "C2, C3"."""
    numbered: dict[tuple[str, str], list[str]] = {}
    for n, claim in enumerate(paper.claims, 1):
        numbered.setdefault((claim.text, claim.setting), []).append(f"C{n}")
    return [(", ".join(numbers), text, setting) for (text, setting), numbers in numbered.items()]


def _claims_markdown(found_tables: dict[str, list[dict]]) -> list[str]:
    md = ["## Claims", "", CLAIMS_NOTE, ""]
    for key, rows in found_tables.items():
        paper = PAPERS[key]
        md += [f"### Claims of {paper.title}", "",
               *(f"- **{n}** {text} (the paper: {setting})." for n, text, setting in _claim_list(paper)),
               "", "| " + " | ".join(CLAIM_HEADS.values()) + " |", "|" + "---|" * len(CLAIM_HEADS),
               *("| " + " | ".join(str(row[k]) for k in CLAIM_HEADS) + " |" for row in rows), ""]
    return md


def _claims_html(found_tables: dict[str, list[dict]]) -> str:
    parts = [f"<h2 id='claims'>Claims</h2><p>{_e(CLAIMS_NOTE)}</p>"]
    heads = "".join(f"<th class='key'>{_e(h)}</th>" for h in CLAIM_HEADS.values())
    for key, rows in found_tables.items():
        paper = PAPERS[key]
        items = "".join(f"<li><b>{n}</b> {_e(text)} <small>(the paper: {_e(setting)})</small></li>"
                        for n, text, setting in _claim_list(paper))
        body = "\n".join("<tr>" + "".join(f"<td class='key {k}'>{_e(row[k])}</td>" for k in CLAIM_HEADS)
                         + "</tr>" for row in rows)
        parts.append(f"<h3>Claims of {_e(paper.title)}</h3><ul>{items}</ul><div class='table'>"
                     f"<table class='claims'>\n<tr>{heads}</tr>\n{body}\n</table></div>")
    return "\n".join(parts)


def _measured(section) -> tuple[list[str], list[str]]:
    """The paper's columns that some row of the table has, ours or the paper's; the others."""
    table = section["table"]
    shown = [c for c in section["paper"].columns
             if (table[c] != "–").any() or f"paper {c}" in table]
    return shown, [c for c in section["paper"].columns if c not in shown]


def _cell(row, column: str) -> tuple[str, str | None]:
    """Ours, and the paper's published number or None."""
    paper = row.get(f"paper {column}")
    return str(row[column]), paper if isinstance(paper, str) else None


def _heading(column: str, labels: int | None) -> str:
    return f"{column} (of {labels})" if column.startswith("N+") and labels else column


def _section_lines(section) -> list[str]:
    lines = [f"Protocol: {section['protocol']}."]
    if section["labels"] and any(c.startswith("N+") for c in _measured(section)[0]):
        lines.append(f"N+ counts out of {section['labels']} labels.")
    lines.append(f"Differs from the paper in: {section['differences']}.")
    return lines


def _split(column: str) -> tuple[str, str]:
    """A column's metric and qualifier: ``CF1@tuned`` is CF1 at tuned thresholds, ``P@10`` a
    metric of its own."""
    if column in DEFINITIONS:
        return column, ""
    name, _, qualifier = column.partition("@")
    return name, qualifier


def _used(sections) -> dict[str, str]:
    """The definitions of the metrics and qualifiers that the tables show."""
    names, qualifiers = set(), {}
    for section in sections:
        for column in _measured(section)[0]:
            name, qualifier = _split(column)
            names.update((name, *DEFINED_WITH.get(name, ())))
            if qualifier:
                qualifiers[f"@{qualifier}"] = QUALIFIERS.get(qualifier, "(not defined)")
    unknown = {name: "(not defined)" for name in sorted(names - set(DEFINITIONS))}
    return {**{n: text for n, text in DEFINITIONS.items() if n in names}, **unknown, **qualifiers}


def _markdown(section, rendered: set[str]) -> list[str]:
    table, (columns, missing) = section["table"], _measured(section)
    keys = list(section["paper"].row_keys)
    heads = [*keys, *(_heading(c, section["labels"]) for c in columns), "seeds (n)"]
    md = [f"### {section['dataset']}", "", *_section_lines(section), "",
          "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys]
        for column in columns:
            ours, paper = _cell(row, column)
            cells.append(f"{ours} (paper {paper})" if paper else ours)
        md.append("| " + " | ".join([*cells, str(row["seeds"])]) + " |")
    if missing:
        md += ["", f"Not measured in these runs: {', '.join(missing)}."]
    notebooks = sorted({n for row in table["notebooks"] for n in row})
    if notebooks:
        links = [f"[{Path(n).parent.name}]({quote(n)})"
                 + (f" ([HTML]({quote(_html_name(n))}))" if n in rendered else "")
                 for n in notebooks]
        md += ["", f"Notebooks: {', '.join(links)}."]
    return md + [""]


def _e(text) -> str:
    return html.escape(str(text))


def _html_table(section) -> str:
    table, (columns, missing) = section["table"], _measured(section)
    keys = list(section["paper"].row_keys)
    heads = [f"<th class='key'>{_e(k)}</th>" for k in keys]
    for column in columns:
        name, qualifier = _split(column)
        label = f"<a href='#def-{_e(name)}'>{_e(name)}</a>" + (f"@{_e(qualifier)}"
                                                               if qualifier else "")
        if name == "N+" and section["labels"]:
            label += f"<br><small>of {section['labels']}</small>"
        heads.append(f"<th>{label}</th>")
    heads.append("<th>seeds (n)</th>")
    body = []
    for _, row in table.iterrows():
        cells = [f"<td class='key'>{_e(row[k])}</td>" for k in keys]
        for column in columns:
            ours, paper = _cell(row, column)
            extra = f"<br><span class='paper'>paper {_e(paper)}</span>" if paper else ""
            cells.append(f"<td>{_e(ours)}{extra}</td>")
        body.append("<tr>" + "".join(cells) + f"<td>{row['seeds']}</td></tr>")
    facts = "".join(f"<p>{_e(line)}</p>" for line in _section_lines(section))
    note = f"<p class='missing'>Not measured in these runs: {_e(', '.join(missing))}.</p>" \
        if missing else ""
    return (f"<div class='facts'>{facts}</div>\n<div class='table'><table>\n"
            f"<tr>{''.join(heads)}</tr>\n" + "\n".join(body) + f"\n</table></div>{note}")


def _html_name(notebook: str) -> str:
    return Path(notebook).with_suffix(".html").as_posix()


def _figures(folder: Path) -> list[Path]:
    order = list(FIGURES)
    return sorted(folder.glob("*.png"),
                  key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))


def _html_run(profile_dir: Path, notebook: str, rendered: set[str], prefix: str) -> str:
    """A run's notebook links and its figures (the PNGs beside its notebook)."""
    folder = Path(notebook).parent
    name = folder.as_posix().removeprefix(prefix) or folder.name
    links = [f"<a href='{_e(quote(notebook))}'>.ipynb</a>"]
    if notebook in rendered:
        links.insert(0, f"<a href='{_e(quote(_html_name(notebook)))}'>notebook (HTML)</a>")
    figures = []
    for png in _figures(profile_dir / folder):
        caption = FIGURES.get(png.stem, png.stem.replace("_", " "))
        src = _e(quote((folder / png.name).as_posix()))
        figures.append(f"<figure><a href='{src}'><img src='{src}' alt='{_e(name)}: "
                       f"{_e(caption)}'></a><figcaption>{_e(caption)}</figcaption></figure>")
    return (f"<div class='run'><h4>{_e(name)} <small>{' · '.join(links)}</small></h4>"
            f"<div class='figures'>{''.join(figures)}</div></div>")


# nbconvert's lab template with the blocks that fetch scripts from a CDN (require.js, widgets,
# MathJax, mermaid) left empty: its CSS is inlined and images are embedded, so the page needs
# no network. Formulas then show as their TeX source.
_OFFLINE = ("{%- extends 'index.html.j2' -%}"
            "{% block html_head_js %}{% endblock %}{% block jupyter_widgets %}{% endblock %}"
            "{% block html_head_js_mathjax %}{% endblock %}"
            "{% block html_head_js_mermaidjs %}{% endblock %}")


def render_notebooks(profile_dir: str | Path, notebooks) -> set[str]:
    """Render each executed notebook (paths relative to ``profile_dir``) to HTML beside it,
    where that HTML is missing or older; returns those that have their HTML. A notebook that
    does not read is named in a warning and linked as ``.ipynb`` only."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[DictLoader({"offline.html.j2": _OFFLINE})],
                            embed_images=True)
    rendered = set()
    for notebook in notebooks:
        source, target = Path(profile_dir) / notebook, Path(profile_dir) / _html_name(notebook)
        try:
            if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
                body, _ = exporter.from_notebook_node(nbformat.read(source, as_version=4))
                atomic_write_text(target, body)
            rendered.add(notebook)
        except (ValueError, OSError, nbformat.ValidationError) as err:
            warnings.warn(f"{source}: not rendered to HTML ({type(err).__name__}: {err})",
                          stacklevel=2)
    return rendered


def _summary_metric(key: str, group: pd.DataFrame) -> str | None:
    preferred = ["CF1@tuned"] if key == "p0" else []
    return next((c for c in [*preferred, *PAPERS[key].columns]
                 if c in group and group[c].notna().any()), None)


def plot_summary(results: pd.DataFrame):
    """Per (paper, dataset), one metric of the paper's table per configuration (P0: CF1 at
    tuned thresholds, else its first measured column): bars of the mean over seeds with
    sample-std error bars where there are several seeds, the paper's number as a black mark.
    One legend for the figure, above the panels, where it covers no bar."""
    import matplotlib.pyplot as plt

    panels = list(results.groupby(["paper", "dataset"], sort=False))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.8 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    legend, spread = {}, False
    for ax, ((key, dataset), group) in zip(axes.flat, panels):
        paper, metric = PAPERS[key], _summary_metric(key, group)
        ax.set_title(f"{key}, {dataset}")
        if metric is None:
            ax.text(0.5, 0.5, "no metric measured", ha="center", transform=ax.transAxes)
            continue
        keys = list(paper.row_keys)
        stats = group.groupby(keys, sort=False)[metric].agg(["mean", "std", "count"])
        rows = [dict(zip(keys, k if isinstance(k, tuple) else (k,))) for k in stats.index]
        labels = [", ".join(str(v) for v in row.values()) for row in rows]
        errors = stats["std"].where(stats["count"] > 1)  # a single seed has no spread to show
        several = errors.notna().any()
        spread |= several
        legend["ours"] = ax.bar(labels, stats["mean"], yerr=errors.to_numpy() if several else None,
                                capsize=3)
        published = [paper.reported(dataset, row).get(metric) for row in rows]
        marks = [(x, y) for x, y in enumerate(published) if y is not None]
        if marks:
            legend["paper"] = ax.scatter(*zip(*marks), marker="_", s=400, color="black", zorder=3)
        ax.set_ylabel(f"test {metric}")
        ax.set_xlabel(" / ".join(keys))
        ax.tick_params(axis="x", rotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if legend:
        names = ["ours: mean over seeds, ± sample std" if key == "ours" and spread else key for key in legend]
        fig.legend(legend.values(), names, loc="outside upper center", ncols=len(legend), frameon=False)
    return fig


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;color:#222;margin:2em auto;max-width:86em;padding:0 1.5em}
h2{margin-top:2em;border-bottom:1px solid #ddd} h4{margin:1.2em 0 .3em}
h4 small{font-weight:normal;font-size:13px} nav{font-size:14px}
.table{overflow-x:auto} table{border-collapse:collapse;font-size:12px;margin:.4em 0}
td,th{border:1px solid #ccc;padding:3px 5px;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#f3f3f3;font-weight:600} .key{text-align:left}
td.setting,td.verdict{white-space:normal;max-width:30em} td.setting{min-width:22em}
th a{color:inherit} .paper{color:#777;font-size:12px}
.facts{margin-top:1.4em} .facts p,.missing{font-size:13px;color:#444;max-width:75em;margin:.25em 0}
.figures{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;flex:0 1 400px} figure img{display:block;width:100%;max-height:360px;
object-fit:contain;object-position:left top}
figcaption{font-size:12px;color:#555} figure.summary{max-width:100%}
figure.summary img{width:auto;max-width:100%;max-height:none}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:14px}
dt{font-weight:600} dd{margin:0}
"""


def write_report(profile_dir: str | Path, title: str | None = None, figures: bool = True) -> list[dict]:
    """Write ``results.md`` and ``index.html`` into ``profile_dir`` and, with ``figures``,
    ``summary.png`` and each run's notebook as HTML beside it; without, the report is text
    and tables linking the notebooks (which hold the figures), for a copy kept in a
    repository. Returns the sections (one per table)."""
    import matplotlib.pyplot as plt

    profile_dir = Path(profile_dir)
    title = title or f"annotlib results: {profile_dir.name}"
    results = collect_results(profile_dir)
    if results.empty:
        raise FileNotFoundError(f"{profile_dir}: no runs/**/metrics.json to report")
    sections = list(tables(results))
    rendered = set()
    if figures:
        rendered = render_notebooks(profile_dir, dict.fromkeys(n for n in results["notebook"] if n))
        fig = plot_summary(results)
        fig.savefig(profile_dir / "summary.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    definitions = _used(sections)
    papers = list(dict.fromkeys(s["paper"].key for s in sections))
    claims = claim_tables(results, profile_dir.name)
    md = [f"# {title}", "", *_claims_markdown(claims), "## Results", "", NOTE, ""]
    page = ["<nav>Contents: <a href='#claims'>claims</a> · "
            + " · ".join(f"<a href='#{k}'>{k.upper()}</a>" for k in papers)
            + " · <a href='#definitions'>metric definitions</a></nav>", _claims_html(claims),
            (f"<h2 id='results'>Results</h2><p>{_e(NOTE)} Metric names are defined "
             "<a href='#definitions'>below</a>.</p>")]
    if figures:
        page.append(f"<figure class='summary'><img src='summary.png' alt='{_e(SUMMARY_CAPTION)}'>"
                    f"<figcaption>{_e(SUMMARY_CAPTION)}</figcaption></figure>")
    for key in papers:
        paper = PAPERS[key]
        said = "; ".join(dict.fromkeys(claim.text for claim in paper.claims))
        md += [f"## {paper.title}", "", f"The paper's claims: {said} (tested under Claims).", ""]
        page.append(f"<h2 id='{key}'>{_e(paper.title)}</h2>"
                    f"<p>{_e('The paper’s claims: ' + said)} (tested under "
                    "<a href='#claims'>Claims</a>).</p>")
        own = [s for s in sections if s["paper"].key == key]
        for dataset in dict.fromkeys(s["dataset"] for s in own):
            page.append(f"<h3>{_e(dataset)}</h3>")
            for section in (s for s in own if s["dataset"] == dataset):
                md += _markdown(section, rendered)
                page.append(_html_table(section))
            rows = results[(results["paper"] == key) & (results["dataset"] == dataset)]
            prefix = f"runs/{key}/{dataset}/"
            page += [_html_run(profile_dir, n, rendered, prefix)
                     for n in dict.fromkeys(n for n in rows["notebook"] if n)]
    md += ["## Metric definitions", "", *(f"- **{k}**: {v}." for k, v in definitions.items()), ""]
    page.append("<h2 id='definitions'>Metric definitions</h2><dl>" + "".join(
        f"<dt id='def-{_e(k)}'>{_e(k)}</dt><dd>{_e(v)}.</dd>"
        for k, v in definitions.items()) + "</dl>")
    atomic_write_text(profile_dir / "results.md", "\n".join(md))
    atomic_write_text(profile_dir / "index.html",
                      f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                      f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                      f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
                      f"<h1>{_e(title)}</h1>\n" + "\n".join(page) + "\n</body></html>\n")
    return sections


def run_table(metrics: dict) -> pd.DataFrame:
    """One run's test metrics (its paper's columns) with the paper's published numbers below."""
    paper = PAPERS[metrics["paper"]]
    rows = {"ours": {c: metrics["test"].get(c) for c in paper.columns}}
    published = paper.reported(metrics["dataset"], paper.row(metrics))
    if published:
        rows["paper"] = {c: published.get(c) for c in paper.columns}
    return pd.DataFrame.from_dict(rows, orient="index")
