"""The documentation: every relative link of README.md and docs/*.md reaches a file of the
repository, every number a paper module publishes is in docs/PAPERS.md beside its dataset
and metric, and every citation of docs/PAPERS.md in the code names a section that exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from annotlib.papers import PAPERS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "PAPERS.md"
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Where code and notebooks may cite the paper notes.
CITING = ("annotlib", "notebooks", "benchmarks", "scripts", "tests")
CITING_SUFFIXES = (".py", ".ipynb", ".sh", ".md")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
SECTION = re.compile(r"^## (P\d+)\b", re.MULTILINE)
CITATION = re.compile(r"(?<![\w.])((?:[\w.-]+/)*)PAPERS\.md(\W{0,4}(P\d+))?")


# ---------------------------------------------------------------- helpers


def link_targets(text: str) -> list[str]:
    """The targets of the inline and reference links of Markdown ``text``, outside code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text) + REFERENCE.findall(text)


def broken_links(text: str, source: Path) -> list[str]:
    """The relative link targets of ``text`` (a file at ``source``) that do not name a file
    or folder inside the repository; web and mail links and in-page anchors are skipped."""
    broken = []
    for target in link_targets(text):
        if SCHEME.match(target) or target.startswith("#"):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path.startswith("/"):
            broken.append(f"{target} (an absolute path)")
            continue
        resolved = (source.parent / path).resolve()
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
    return broken


def sections(text: str) -> dict[str, str]:
    """``{"P0": the text of its section, ...}``: each ``## P<k>`` up to the next ``## ``."""
    parts = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    return {m.group(1): part for part in parts if (m := SECTION.match(part))}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_rows(text: str) -> list[dict[str, str]]:
    """Every body row of every Markdown table in ``text``, as ``{header: cell}`` (backticks
    dropped from the headers, the cells as written)."""
    rows, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[i + 1])):
            header = [h.replace("`", "") for h in _cells(lines[i])]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
        else:
            i += 1
    return rows


def formatted(metric: str, value: float) -> str:
    """A published number as docs/PAPERS.md writes it (and the report prints it): counts
    (N+) as integers, every other metric as the fraction with three decimals."""
    return f"{value:.0f}" if metric.startswith("N+") else f"{value:.3f}"


def missing(rows: list[dict[str, str]], numbers: dict, named: list[str],
            columns: dict[str, str] | None = None) -> list[str]:
    """The ``{metric: value}`` of ``numbers`` that no table row shows: a row whose ``metric``
    column holds the formatted value, which names each of ``named`` in backticks, and
    whose columns named like a key of ``columns`` (a results-table row key) hold its value."""
    def shows(row: dict[str, str], metric: str, value) -> bool:
        return (row.get(metric) == formatted(metric, value)
                and all(any(f"`{name}`" in cell for cell in row.values()) for name in named)
                and all(f"`{v}`" in row[k] for k, v in (columns or {}).items() if k in row))
    return [f"{metric}={formatted(metric, value)}" for metric, value in numbers.items()
            if not any(shows(row, metric, value) for row in rows)]


def published(paper) -> list[tuple[str, dict, dict]]:
    """``(dataset, row, {metric: value})`` that ``paper.reported`` gives for every training of
    the paper profile's grid (the rows its results table would have)."""
    out = []
    for run in paper.grid("paper", None, None):
        for folder, cfg in paper.trainings(run):
            metrics = {"paper": paper.key, "dataset": cfg.dataset, "variant": folder or run.variant,
                       "loss": cfg.loss, "config": cfg.to_dict()}
            row = paper.row(metrics)
            numbers = paper.reported(cfg.dataset, row)
            if numbers and (cfg.dataset, row, numbers) not in out:
                out.append((cfg.dataset, row, numbers))
    return out


def module_tables(module) -> list[tuple[list[str], dict]]:
    """``(keys, {metric: number})`` of every leaf of the module's published-number dicts
    (``REPORTED``, ``LOSS_ABLATION``, ...), ``keys`` the path to it (dataset, loss)."""
    leaves = []

    def walk(keys: list[str], value) -> None:
        if isinstance(value, dict) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            leaves.append((keys, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk([*keys, str(k)], v)

    for name, value in vars(module).items():
        if name.isupper() and ("REPORTED" in name or "ABLATION" in name) and isinstance(value, dict):
            walk([], value)
    return leaves


def citations(text: str) -> list[tuple[str, str | None]]:
    """``(how PAPERS.md is cited, the section named or None)`` for each citation in ``text``."""
    return [(m.group(1) + "PAPERS.md", m.group(3)) for m in CITATION.finditer(text)]


# ---------------------------------------------------------------- the checks of the checks


def test_the_link_check_finds_links_that_leave_the_repository_or_name_nothing():
    text = ("[design](DESIGN.md) [up](../../shared/PAPERS.md) [gone](missing.md#part) "
            "![fig](../reports/reference/quick/results.md) [web](https://example.org/x.md) [here](#p0) "
            "`[code](nowhere.md)`\n\n[ref]: ../../outside.md\n")
    assert broken_links(text, DOC) == ["../../shared/PAPERS.md (outside the repository)",
                                       "missing.md#part (no such file)",
                                       "../../outside.md (outside the repository)"]


def test_the_number_check_needs_the_dataset_the_metric_and_the_format():
    rows = table_rows("| dataset | loss | `CF1@0.5` | `N+@0.5` |\n|---|---|---|---|\n"
                      "| Corel (`corel-5k`) | `bce` | 0.416 | 147 |\n")
    assert missing(rows, {"CF1@0.5": .416, "N+@0.5": 147}, ["corel-5k"], {"loss": "bce"}) == []
    assert missing(rows, {"CF1@0.5": .416}, ["esp-game"]) == ["CF1@0.5=0.416"]
    assert missing(rows, {"CF1@0.5": .416}, ["corel-5k"], {"loss": "asl"}) == ["CF1@0.5=0.416"]
    assert missing(rows, {"CF1@0.5": .42}, ["corel-5k"]) == ["CF1@0.5=0.420"]
    assert missing(rows, {"N+@0.5": 148}, []) == ["N+@0.5=148"]


def test_the_citation_check_reads_the_section_and_spots_stale_paths():
    assert citations("are assumed (docs/PAPERS.md, P4); an assumption of docs/PAPERS.md (P2)") == [
        ("docs/PAPERS.md", "P4"), ("docs/PAPERS.md", "P2")]
    assert citations("see PAPERS.md, P1 and docs/PAPERS.md") == [("PAPERS.md", "P1"),
                                                                  ("docs/PAPERS.md", None)]


# ---------------------------------------------------------------- the documentation


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(path):
    assert broken_links(path.read_text(encoding="utf-8"), path) == []


def test_readme_and_design_link_the_paper_notes():
    assert "docs/PAPERS.md" in link_targets((REPO / "README.md").read_text(encoding="utf-8"))
    assert "PAPERS.md" in link_targets((REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("key", sorted(PAPERS))
def test_every_published_number_is_in_the_papers_section(key):
    paper = PAPERS[key]
    section = sections(DOC.read_text(encoding="utf-8")).get(key.upper())
    assert section is not None, f"docs/PAPERS.md has no '## {key.upper()}' section"
    rows = table_rows(section)
    gaps = []
    found = published(paper)
    for dataset, row, numbers in found:
        columns = {k: str(v) for k, v in row.items()}
        gaps += [f"{dataset} {row}: {gap}" for gap in missing(rows, numbers, [dataset], columns)]
    leaves = module_tables(importlib.import_module(f"annotlib.papers.{key}"))
    for keys, numbers in leaves:
        gaps += [f"{'/'.join(keys)}: {gap}" for gap in missing(rows, numbers, keys)]
    assert bool(found) == bool(leaves), "reported() and the module's published-number dicts disagree"
    assert gaps == []


def test_every_citation_of_the_paper_notes_names_a_section_that_exists():
    known = set(sections(DOC.read_text(encoding="utf-8")))
    assert {key.upper() for key in PAPERS} <= known
    problems = []
    for folder in CITING:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in CITING_SUFFIXES or path.resolve() == Path(__file__).resolve():
                continue
            for cited, section in citations(path.read_text(encoding="utf-8")):
                where = path.relative_to(REPO)
                if cited != "docs/PAPERS.md":
                    problems.append(f"{where}: cites {cited}, not docs/PAPERS.md")
                elif section is None:
                    problems.append(f"{where}: cites docs/PAPERS.md without a section (P<k>)")
                elif section not in known:
                    problems.append(f"{where}: cites docs/PAPERS.md, {section}, which has no section")
    assert problems == []


def test_the_profile_times_are_one_measured_figure_each():
    from annotlib.reproduce import QUICK_MINUTES, REAL_MINUTES

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for profile, minutes in (("quick", QUICK_MINUTES), ("real", REAL_MINUTES)):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `--profile {profile}`"))
        assert f"about {minutes} minutes" in row
    assert re.findall(r"about (\d+) minutes", readme) == [str(QUICK_MINUTES), str(REAL_MINUTES)]


RESULTS_SECTION = re.compile(r"^## Results of the (\w+) profile\n(.*?)(?=^## )", re.MULTILINE | re.DOTALL)
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d{3}(?![\d])")


def test_every_number_of_the_readme_results_is_in_the_committed_report_it_cites():
    """The README's results sections copy their numbers from a committed report: each
    three-decimal number in a section is in that profile's reports/reference/<profile>/results.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = RESULTS_SECTION.findall(readme)
    assert {profile for profile, _ in found} == {"quick", "real"}
    for profile, text in found:
        report = (REPO / "reports" / "reference" / profile / "results.md").read_text(encoding="utf-8")
        numbers = NUMBER.findall(text)
        assert len(numbers) > 10, profile
        assert [n for n in numbers if n.lstrip("+-") not in report] == [], profile


def test_the_committed_reports_are_text_valid_notebooks_and_files_under_1_mb():
    import nbformat

    files = [p for p in (REPO / "reports" / "reference").rglob("*") if p.is_file()]
    assert [str(p) for p in files if p.stat().st_size >= 2**20] == []
    assert [str(p) for p in files if p.suffix in (".png", ".jpg", ".npz", ".pt")] == []
    notebooks = [p for p in files if p.suffix == ".ipynb"]
    assert len(notebooks) > 20
    for path in notebooks:
        nbformat.validate(nbformat.read(path, as_version=4))
