"""The documentation site builds with ``mkdocs build --strict`` (needs the ``docs`` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_module

needs_mkdocs = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("mkdocs", "material", "mkdocstrings_handlers")),
    reason="needs the docs extra: pip install '.[docs]'",
)


@needs_mkdocs
@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = run_module(
        "mkdocs", "build", "--strict",
        "--config-file", str(REPO_ROOT / "mkdocs.yml"),
        "--site-dir", str(site),
        cwd=REPO_ROOT,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("index.html", "quickstart/index.html", "concepts/index.html", "api/losses/index.html"):
        assert (site / page).is_file(), page
    concepts = (site / "concepts" / "index.html").read_text()
    assert "figures/transport_toy.png" in concepts
    assert (site / "figures" / "transport_toy.png").stat().st_size > 10_000
    # API pages are generated from the docstrings.
    assert "hinge_weight" in (site / "api" / "losses" / "index.html").read_text()


def test_every_page_of_the_nav_exists() -> None:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((REPO_ROOT / "mkdocs.yml").read_text(), Loader=_Loader)

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [page for value in node.values() for page in pages(value)]
        if isinstance(node, list):
            return [page for value in node for page in pages(value)]
        return []

    for page in pages(config["nav"]):
        assert (REPO_ROOT / "docs" / page).is_file(), page
