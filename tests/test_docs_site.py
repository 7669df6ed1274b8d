"""The documentation site: math rendered from bundled files (no network), figures present and reproducible."""

from __future__ import annotations

import importlib.util
import re

import yaml

from .conftest import ROOT

DOCS = ROOT / "docs"


def _mkdocs() -> dict:
    # mkdocs.yml has no custom tags; plain YAML is enough to read its script list and nav
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_math_is_rendered_from_bundled_files_only():
    scripts = _mkdocs()["extra_javascript"]
    assert scripts, "no MathJax configured"
    for script in scripts:
        assert not re.match(r"^[a-z]+://", script), f"{script} needs the network"
        assert (DOCS / script).is_file(), f"{script} is not in docs/"
    bundle = (DOCS / "javascripts" / "mathjax" / "tex-svg-full.js").read_text(
        encoding="utf-8", errors="replace"
    )
    assert "MathJax" in bundle and len(bundle) > 1_000_000  # the full single-file component, fonts included


def test_every_figure_a_page_shows_exists():
    pages = [DOCS / "figures.md", DOCS / "benchmarks.md"]
    shown = [image for page in pages for image in re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", page.read_text())]
    assert len(shown) >= 6
    missing = [image for image in shown if not (DOCS / image).is_file()]
    assert not missing, f"figures missing (run python docs/_figures/make.py): {missing}"


def test_figures_are_reproducible(tmp_path):
    """The evaluation-rule figure, drawn afresh, equals the checked-in SVG byte for byte."""
    spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "_figures" / "make.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    figures.IMG = tmp_path
    figures.rules()
    drawn = (tmp_path / "rules.svg").read_bytes()
    assert drawn == (DOCS / "img" / "rules.svg").read_bytes(), (
        "docs/img/rules.svg is stale or not reproducible"
    )
    assert b"<dc:date>" not in drawn
