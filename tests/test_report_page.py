"""The report page as a reader opens it: figures that load, each run's notebook rendered to
HTML that reads without a network, every metric defined once, narrow tables, and (where
Chromium is installed) a screenshot that is not blank."""

import base64
import html
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from reporting import fake_metrics

from annotlib.papers import PAPERS, grid
from annotlib.papers.p0 import p0_config
from annotlib.report import DEFINITIONS, QUALIFIERS, write_report
from annotlib.stats import TEST_OUTPUTS

CHROMIUM = shutil.which("chromium") or next(
    (p for p in ("/usr/bin/chromium",) if Path(p).exists()), None)
# Figures each paper's notebook saves beside it: enough to show every kind of figure.
FIGURES = {"p0": ["learning_curves", "embeddings", "cams"],
           "p1": ["decoded", "step_cams", "embeddings"],
           "p2": ["embeddings", "retrieval", "cams"],
           "p3": ["map_vs_proportion", "embeddings", "cams"],
           "p4": ["captions", "attention_joint_dis", "embeddings"]}
# As the tasks measure: P1's decoder has no @0.5 metrics, its BCE baseline no @decoded ones.
UNMEASURED = {"cnn_rnn": "@0.5", "bce": "@decoded"}


def png_bytes(seed: int) -> bytes:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.imshow(np.random.default_rng(seed).random((8, 8)), cmap="viridis")
    ax.set_title(f"figure {seed}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    return buffer.getvalue()


def executed_notebook(path: Path) -> None:
    """A notebook as papermill leaves it: a markdown cell, a code cell with text and a PNG."""
    png = base64.b64encode(png_bytes(99)).decode()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Test-image embeddings"),
                nbformat.v4.new_code_cell("print('trained')", execution_count=1, outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="trained\n"),
                    nbformat.v4.new_output("display_data",
                                           data={"image/png": png, "text/plain": "<Figure>"})])]
    nb.metadata["papermill"] = {"end_time": "2025-01-01T00:00:00", "exception": None}
    nbformat.write(nb, path)


def metrics_of(paper, variant="", seed=0) -> dict:
    """Test metrics of every column the run measures (no METEOR: no Java)."""
    unmeasured = ("METEOR", UNMEASURED.get(variant, "METEOR"))
    return {c: (20 + seed if c.startswith("N+") else 0.4 + seed / 100)
            for c in paper.columns if not c.endswith(unmeasured)}


def add_notebook_and_figures(folder: Path, key: str, seed: int) -> None:
    executed_notebook(folder / PAPERS[key].notebook)
    for i, name in enumerate(FIGURES[key]):
        (folder / f"{name}.png").write_bytes(png_bytes(10 * seed + i))


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """A profile with every paper: P0 with two losses (one over three seeds), P1 to P4 one
    notebook each that trains several methods; P1's decoder records no label count."""
    root = tmp_path_factory.mktemp("quick")
    for loss, seeds in (("bce", [0]), ("asl", [0, 1, 2])):
        for seed in seeds:
            cfg = p0_config("corel-5k", loss, seed=seed)  # P0 publishes numbers for it
            run = fake_metrics(root / "runs/p0/corel-5k", f"{loss}-seed{seed}", cfg,
                               metrics_of(PAPERS["p0"], seed=seed))
            add_notebook_and_figures(run, "p0", seed)
    for key in ("p1", "p2", "p3", "p4"):
        paper, run = PAPERS[key], grid("smoke", papers=[key])[0]
        folder = root / "runs" / run.path
        for variant, cfg in paper.trainings(run):
            fake_metrics(folder, variant, cfg, metrics_of(paper, variant),
                         labels=None if variant == "cnn_rnn" else 22)
        add_notebook_and_figures(folder, key, 0)
    write_report(root)
    return root


class Page(HTMLParser):
    """The tags of a page with their attributes, its results tables and its claims tables
    (``class='claims'``) as rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.tables, self.claims, self.cell = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.current = self.claims if dict(attrs).get("class") == "claims" else self.tables
            self.current.append([])
        elif tag == "tr":
            self.current[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "br" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.current[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def attrs(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def page(profile: Path) -> Page:
    return Page((profile / "index.html").read_text(encoding="utf-8"))


def local(profile: Path, link: str) -> Path:
    """The file a link of the page names, which must be relative and inside the profile."""
    assert "://" not in link and not link.startswith("/") and ".." not in link, link
    return profile / unquote(link)


def metric_of(column: str) -> tuple[str, str]:
    if column in DEFINITIONS:  # P@10 is a metric, not P at 10
        return column, ""
    name, _, qualifier = column.partition("@")
    return name, qualifier


def test_every_image_resolves_and_each_paper_shows_its_figures(profile):
    images = page(profile).attrs("img")
    assert all(local(profile, img["src"]).is_file() and img.get("alt") for img in images)
    sources = [img["src"] for img in images]
    assert sources[0] == "summary.png"
    for key, names in FIGURES.items():
        shown = {Path(s).stem for s in sources if s.startswith(f"runs/{key}/")}
        assert set(names) <= shown and "embeddings" in shown
        assert {"cams", "step_cams", "attention_joint_dis"} & shown  # a CAM of some kind
    assert sources.count("runs/p0/corel-5k/asl-seed2/cams.png") == 1
    assert str(profile) not in (profile / "index.html").read_text(encoding="utf-8")


def test_every_notebook_is_linked_as_ipynb_and_as_html_that_reads_offline(profile):
    links = [a["href"] for a in page(profile).attrs("a")]
    notebooks = sorted(p.relative_to(profile).as_posix() for p in profile.glob("runs/**/*.ipynb"))
    assert len(notebooks) == 4 + 4
    for notebook in notebooks:
        rendered = notebook.removesuffix(".ipynb") + ".html"
        assert notebook in links and rendered in links
        text = local(profile, rendered).read_text(encoding="utf-8")
        assert "Test-image embeddings" in text and "trained" in text
        assert "data:image/png;base64" in text  # the output's figure is inside the page
        fetched = [(tag, attrs) for tag, attrs in Page(text).tags
                   if tag in ("script", "link", "img", "iframe")
                   and re.match(r"(https?:)?//", attrs.get("src") or attrs.get("href") or "")]
        assert fetched == []  # nothing from a network
    assert all(local(profile, link).exists() for link in links if not link.startswith("#"))


def test_every_metric_is_defined_once_and_tables_are_narrow(profile):
    text = (profile / "index.html").read_text(encoding="utf-8")
    report = page(profile)
    defined = [dt["id"].removeprefix("def-") for dt in report.attrs("dt")]
    assert len(defined) == len(set(defined)) and "(not defined)" not in text
    assert {"CP", "CR", "CF1", "OP", "OR", "OF1", "N+", "mAP", "accuracy", "polarity_accuracy",
            "P@10", "nDCG", "BLEU-4", "CIDEr-D", "pointing_game_cam", "agreement_kl", "@0.5",
            "@tuned", "@decoded"} <= set(defined)
    keys = {key for paper in PAPERS.values() for key in paper.row_keys}
    for table in report.tables:
        heads = table[0]
        assert not any(w in h.lower() for h in heads for w in ("protocol", "differ", "notebook"))
        assert heads[-1] == "seeds (n)" and all(len(row) == len(heads) for row in table)
        for head in heads[:-1]:  # a row key, or a metric (and its qualifier) defined on the page
            name, qualifier = metric_of(head.split(" of ")[0])
            assert head in keys or name in defined and (not qualifier or f"@{qualifier}" in defined)
    # The protocol and the differences from the paper: once above each table.
    assert text.count("<p>Protocol: ") == text.count("Differs from the paper in: ") \
        == len(report.tables)
    p0 = {row[0]: row for row in report.tables[0][1:]}
    assert p0["asl"][-1] == "3" and p0["bce"][-1] == "1"  # how many seeds, never a seed id
    assert "N+@0.5 of 22" in report.tables[0][0] and "paper 179" in " ".join(p0["asl"])
    cnn_rnn = next(t for t in report.tables if any(row[0] == "cnn_rnn" for row in t))
    assert "N+@decoded of 22" in cnn_rnn[0]  # the label count of the dataset's other run
    assert "CF1@0.5" not in cnn_rnn[0]  # measured by no run of the table: named below it
    p4 = next(t for t in report.tables if any(row[0] == "joint_dis" for row in t))
    assert not any(h.startswith("METEOR") for h in p4[0])
    assert "Not measured in these runs: METEOR." in text


def test_claims_open_the_page_one_table_per_paper(profile):
    text = (profile / "index.html").read_text(encoding="utf-8")
    report = page(profile)
    assert text.index("<h2 id='claims'>") < text.index("summary.png") < text.index("<h2 id='p0'>")
    assert len(report.claims) == len(PAPERS)  # every paper ran
    outcomes = ("reproduced", "not reproduced", "inconclusive", "not run", "not measured", "no interval: ")
    for paper, table in zip(PAPERS.values(), report.claims):
        heads = table[0]
        assert heads[0] == "claim" and heads[-1] == "verdict" and all(len(row) == len(heads) for row in table)
        assert {row[0] for row in table[1:]} == {f"C{n}" for n in range(1, len(paper.claims) + 1)}
        assert all(row[-1].startswith(outcomes) for row in table[1:])
        for claim in paper.claims:
            assert html.escape(claim.text) in text
    # These runs keep no per-image test outputs: each measured claim says so instead of an interval.
    p0 = report.claims[0]
    assert any(row[-1] == f"no interval: runs/p0/corel-5k/asl-seed0 has no {TEST_OUTPUTS} (run before "
               "per-image outputs were kept, or its task keeps none)" for row in p0[1:])


def test_every_column_of_every_paper_has_a_definition():
    for paper in PAPERS.values():
        for column in paper.columns:
            name, qualifier = metric_of(column)
            assert name in DEFINITIONS and (not qualifier or qualifier in QUALIFIERS), column


def test_results_md_defines_the_metrics_and_links_both_notebook_forms(profile):
    md = (profile / "results.md").read_text(encoding="utf-8")
    assert "- **CF1**: " in md and "- **@tuned**: " in md and "| seeds (n) |" in md
    assert "(runs/p0/corel-5k/asl-seed1/01_unsymmetric_loss.ipynb)" in md
    assert "(runs/p0/corel-5k/asl-seed1/01_unsymmetric_loss.html)" in md


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.parametrize("shown", ["index.html",
                                   "runs/p0/corel-5k/bce-seed0/01_unsymmetric_loss.html"])
def test_a_headless_browser_shows_the_page(profile, shown, tmp_path):
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}",
                    "--window-size=1280,2000", "--hide-scrollbars", (profile / shown).as_uri()],
                   check=True, timeout=120, capture_output=True)
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        # text, tables and figures, not a blank or error page
        assert len(image.convert("RGB").getcolors(1 << 24)) > 100
