"""The leaderboard site (``--html DIR``): what it writes, that bad input writes nothing, and
the page as headless Chromium renders it from disk (sorted and filtered by the URL hash,
published rows with their source, each run's matrix a click away, a non-blank screenshot).

The browser tests need Debian's ``chromium`` (``.ci/run`` installs it); without it they skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_leaderboard import LORA, PISSA, fake_result, reference_rows, write

from cl_lora.leaderboard import site as site_module
from cl_lora.leaderboard.__main__ import main
from cl_lora.leaderboard.references import COLUMNS
from cl_lora.leaderboard.site import ASSETS, GENERATOR, STATIC

STREAM = "split-cifar100"
BACKBONE = "vit_base_patch16_224.augreg_in21k"
SLUG = f"{STREAM}-task-{BACKBONE}"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lora (ACC 0.7 over seeds 0-2), pissa (0.8) and one lora run at rank 16 (0.5), on a
    stream with a published number (InfLoRA 86.51% ACC) and another setup's."""
    runs = tmp_path_factory.mktemp("runs")
    for seed in range(3):
        write(runs, fake_result(seed, LORA[seed], stream=STREAM, backbone=BACKBONE))
        write(runs, fake_result(seed, PISSA[seed], "pissa", STREAM, BACKBONE))
    write(runs, fake_result(0, [[0.5, None], [0.5, 0.5]], stream=STREAM, backbone=BACKBONE,
                            rank=16))  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("references")
    rows = [reference_rows(), reference_rows(backbone="t5-large", stream="cl-benchmark-order1")]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "refs.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def site(runs_dir: Path, references: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("out") / "site"
    argv = [str(runs_dir), "--html", str(folder), "--compare", "--references", str(references)]
    assert main(argv) == 0
    return folder


def test_site_holds_index_assets_figures_and_a_page_per_run(site: Path, runs_dir: Path):
    index = (site / "index.html").read_text()
    assert GENERATOR in index
    for name in ASSETS:
        assert (site / name).read_bytes() == (STATIC / name).read_bytes()
    assert {p.name for p in (site / "plots").iterdir()} == {
        f"acc-forgetting-{SLUG}.png",
        f"retention-{SLUG}.png",
    }
    for figure in ("acc-forgetting", "retention"):
        assert f'<img src="plots/{figure}-{SLUG}.png"' in index
    pages = sorted(p.name for p in (site / "runs").iterdir())
    assert len(pages) == 7 and all(f'href="runs/{page}"' in index for page in pages)
    assert not (runs_dir / "LEADERBOARD.md").exists()  # --html alone writes only the site
    assert all(path.stat().st_mode & 0o004 for path in site.rglob("*"))  # a web server reads it
    assert not list(site.parent.glob(".site.*"))  # no staging folder left behind


def test_site_needs_no_network(site: Path):
    """Every page loads only files of the site: no absolute URL in any src or href."""
    for page in [site / "index.html", *(site / "runs").iterdir()]:
        text = page.read_text()
        for link in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert "//" not in link, (page.name, link)
            if not link.startswith("#"):  # another tab of the same page
                assert (page.parent / link.split("#")[0]).is_file(), (page.name, link)
    assert "fetch(" not in (site / "site.js").read_text()


def test_rows_carry_intervals_paired_differences_and_published_sources(site: Path):
    dom = Dom.parse((site / "index.html").read_text())
    rows = {(row["method"], row["setup"]): row for row in dom.sections[SLUG]["rows"]}
    pissa = rows[("pissa", "")]
    assert pissa["acc"] == "0.800 ± 0.248" and pissa["source"] == "ours, seeds 0,1,2"
    assert pissa["d_acc"] == "+0.100 ± 0.248"  # differences 0.1, 0.2, 0.0 against lora
    assert pissa["p_acc"] == "0.225"  # paired t-test, the only one of its family
    assert rows[("lora", "")]["d_acc"] == "ref."
    assert rows[("lora", "rank=16")]["d_acc"] == "-0.100"  # one pair: no interval, no p
    assert rows[("lora", "rank=16")]["p_acc"] == ""
    published = rows[("inflora published", "x")]
    assert published["class"] == "published"
    assert published["acc"] == "0.865 (86.51%)"
    assert "source: a paper, Table 1" in published["source"]
    others = dom.sections["published"]["rows"]
    assert [row["stream"] for row in others] == ["cl-benchmark-order1"]


def test_format_html_is_gone_with_a_pointer_to_the_site(runs_dir: Path, capsys):
    assert main([str(runs_dir), "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--html DIR" in err


def test_bad_input_writes_nothing(runs_dir: Path, tmp_path: Path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main([str(runs_dir), "--html", str(taken)]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert main([str(tmp_path / "nope"), "--html", str(tmp_path / "new")]) == 2
    assert main([str(tmp_path / "taken"), "--html", str(tmp_path / "new")]) == 2  # no results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_failed_build_leaves_the_earlier_site(site: Path, runs_dir: Path, monkeypatch):
    """The site is built beside DIR and moved into place when complete: an error half-way
    leaves the earlier site as it was and no staging folder."""
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def broken(*args):
        raise RuntimeError("half-way")

    monkeypatch.setattr(site_module, "run_page", broken)
    board_argv = [str(runs_dir), "--html", str(site)]
    with pytest.raises(RuntimeError, match="half-way"):
        main(board_argv)
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in site.parent.iterdir()) == ["site"]


# -- in a browser -----------------------------------------------------------------------------
class Dom(HTMLParser):
    """The parts of a rendered index a test reads: per section (by ``data-stream``) whether it
    is hidden, and its table rows: class, hidden, links, and each cell's text by column key;
    plus the row count next to the filter box."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.count = ""
        self._section: dict | None = None
        self._keys: list[str] = []
        self._row: dict | None = None
        self._cell: list[str] | None = None
        self._in_count = False

    @classmethod
    def parse(cls, text: str) -> Dom:
        dom = cls()
        dom.feed(text)
        return dom

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._section = {"hidden": "hidden" in attributes, "rows": []}
            self.sections[attributes["data-stream"]] = self._section
            self._keys = []
        elif tag == "th" and "data-key" in attributes:
            self._keys.append(attributes["data-key"])
        elif tag == "tr" and "data-i" in attributes:
            self._row = {"class": attributes["class"], "hidden": "hidden" in attributes,
                         "links": [], "cells": []}  # fmt: skip
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "a" and self._row is not None:
            self._row["links"].append(attributes["href"])
        elif tag == "span" and attributes.get("id") == "count":
            self._in_count = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            row = dict(zip(self._keys, self._row.pop("cells"), strict=True))
            self._section["rows"].append({**self._row, **row})
            self._row = None
        elif tag == "span":
            self._in_count = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_count:
            self.count += data


def render(page: Path, fragment: str = "", screenshot: Path | None = None) -> str:
    """``page`` (with ``#fragment``) as headless Chromium leaves it after its scripts ran;
    with ``screenshot``, a 1400x1000 PNG of it instead."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions"]  # fmt: skip
    if screenshot is None:
        command.append("--dump-dom")
    else:
        command += [f"--screenshot={screenshot}", "--window-size=1400,1000"]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def visible(dom: Dom, section: str) -> list[dict]:
    return [row for row in dom.sections[section]["rows"] if not row["hidden"]]


def acc(row: dict) -> float:
    return float(row["acc"].split()[0]) if row["acc"] else float("nan")


@needs_chromium
def test_the_hash_sorts_the_table_both_ways(site: Path):
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&sort=acc&desc=1"))
    assert not dom.sections[SLUG]["hidden"] and dom.sections["published"]["hidden"]
    order = [row["method"] for row in visible(dom, SLUG)]
    assert order == ["inflora published", "pissa", "lora", "lora"]  # 0.865, 0.8, 0.7, 0.5
    assert [acc(row) for row in visible(dom, SLUG)] == [0.865, 0.8, 0.7, 0.5]
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&sort=acc"))
    assert [acc(row) for row in visible(dom, SLUG)] == [0.5, 0.7, 0.8, 0.865]
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&sort=method"))
    assert [row["method"] for row in visible(dom, SLUG)] == [
        "inflora published", "lora", "lora", "pissa"
    ]  # fmt: skip


@needs_chromium
def test_the_hash_filters_rows_and_shows_the_count(site: Path):
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&filter=PISSA"))
    assert [row["method"] for row in visible(dom, SLUG)] == ["pissa"]
    assert dom.count == "1 of 4 rows"
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&filter=lora rank=16"))
    assert [row["setup"] for row in visible(dom, SLUG)] == ["rank=16"]  # every word counts
    dom = Dom.parse(render(site / "index.html", "stream=published"))
    assert dom.sections[SLUG]["hidden"] and not dom.sections["published"]["hidden"]


@needs_chromium
def test_published_rows_show_their_source_and_runs_link_to_their_matrix(site: Path):
    dom = Dom.parse(render(site / "index.html", f"stream={SLUG}&filter=published"))
    (published,) = visible(dom, SLUG)
    assert published["class"] == "published" and published["acc"] == "0.865 (86.51%)"
    assert "source: a paper, Table 1" in published["source"]
    pissa = next(row for row in dom.sections[SLUG]["rows"] if row["method"] == "pissa")
    assert pissa["runs"] == "s0 s1 s2"
    page = site / pissa["links"][1]  # seed 1: R = [[0.9, -], [0.9, 0.9]]
    assert page.is_file()
    text = render(page)
    assert "<h1>pissa, seed 1</h1>" in text
    cells = re.findall(r'<td (?:style="[^"]*"|class="na")>([^<]*)</td>', text)
    assert cells == ["0.900", "", "0.900", "0.900"]


@needs_chromium
def test_screenshot_is_a_rendered_page(site: Path, tmp_path: Path):
    shot = tmp_path / "index.png"
    render(site / "index.html", f"stream={SLUG}&sort=acc&desc=1", screenshot=shot)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # text, tabs and the table, not one flat colour
    white = sum(n for n, color in colors if color == (255, 255, 255))
    assert white < 0.95 * 1400 * 1000
