"""The README stays short and points into the documentation site; the site's nav holds every page in docs/.

`mkdocs build --strict` (part of the README's test command, so of CI) checks every link and anchor;
these checks keep the README and the nav from leaving a page out."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12 * 1024


def nav_pages() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    return [page for entry in config["nav"] for page in entry.values()]


def test_the_readme_is_under_12_kb():
    assert len((ROOT / "README.md").read_bytes()) < README_LIMIT


def test_every_page_in_docs_is_in_the_nav_and_every_nav_page_exists():
    pages = nav_pages()
    assert sorted(pages) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))


def test_the_readme_links_every_guide_and_each_link_resolves():
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", readme))
    assert not [link for link in links if not (ROOT / link).is_file()]
    # The home page is the README itself; the API reference is made from docstrings, so only the site shows it.
    guides = {f"docs/{page}" for page in nav_pages()} - {"docs/index.md", "docs/api.md", "docs/benchmarks.md"}
    assert guides <= links, guides - links
    assert "BENCHMARKS.md" in links


def test_the_site_includes_readme_and_benchmarks_rather_than_copies():
    assert (ROOT / "docs" / "benchmarks.md").read_text().strip() == '--8<-- "BENCHMARKS.md"'
    index = (ROOT / "docs" / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for section in re.findall(r'--8<-- "README\.md:(\w+)"', index):
        assert f"<!-- --8<-- [start:{section}] -->" in readme and f"<!-- --8<-- [end:{section}] -->" in readme
    assert "## Set-up" not in index  # the set-up commands live in the README alone


def test_the_site_home_links_every_guide_the_readme_links():
    """docs/index.md repeats the README's list of guides (links relative to docs/): neither may leave one out."""
    readme = (ROOT / "README.md").read_text()
    index = (ROOT / "docs" / "index.md").read_text()
    guides = {link.removeprefix("docs/") for link in re.findall(r"\]\((docs/[^)#:]+\.md)", readme)}
    linked = set(re.findall(r"\]\(([^)#:/]+\.md)", index))
    assert guides <= linked, guides - linked


def test_the_api_reference_shows_every_public_function():
    import headstart

    api = (ROOT / "docs" / "api.md").read_text()
    functions = [name for name in headstart.__all__ if name.islower()]
    assert not [name for name in functions if f"::: headstart.{name}\n" not in api]
