"""The README is for users: short, its links lead somewhere, its commands parse and its Python runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 250
QUICK_START = ["bash scripts/setup.sh && .venv/bin/fashionrec demo", ".venv/bin/python -m pytest"]
#: phrases of a lab notebook, not of a product's documentation
HISTORY = re.compile(
    r"\b(this|last|previous|next) stop\b|\bstop \d+\b|\bstops? ago\b|earlier runs?\b|slow machine|the issue\b"
    r"|\btargets? (?:was|were|is|are|reached|met|not)\b|\b(?:reached|missed|met) the targets?\b",
    re.I,
)


def code_blocks(text: str, lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.S | re.M)
    return [body for kind, body in blocks if lang is None or kind == lang]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"^[a-z]+:", link)]


def test_readme_is_short_and_starts_with_the_quick_start():
    text = README.read_text()
    n = len(text.splitlines())
    assert n < MAX_LINES, f"README.md has {n} lines; results and details belong in docs/"
    blocks = [b.strip() for b in code_blocks(text)]
    assert blocks[:2] == QUICK_START, "CI runs the README's first two commands word for word"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_development_history(path):
    hits = [m.group(0) for m in HISTORY.finditer(path.read_text())]
    assert not hits, f"{path.name}: {hits}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_exist(path):
    bad = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            bad.append(link)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(link)
    assert not bad, f"{path.name}: broken links {bad}"


def readme_commands() -> list[list[str]]:
    """Every `fashionrec ...` command line in the README's shell blocks, as argv after `fashionrec`."""
    out = []
    for block in code_blocks(README.read_text(), "bash"):
        for part in re.split(r"&&|\n", block):
            words = shlex.split(part)
            for i, w in enumerate(words):
                if w.endswith("fashionrec") and "/" not in w.replace(".venv/bin/", ""):
                    out.append(words[i + 1 :])
                    break
    return out


def test_readme_commands_parse():
    from fashionrec.cli.main import build_parser, subcommands

    commands = readme_commands()
    assert len(commands) >= 6  # demo + the five jobs
    names = set(subcommands(build_parser()))
    for argv in commands:
        assert argv[0] in names, f"`fashionrec {argv[0]}` is not a command"
        build_parser().parse_args(argv)  # an unknown option or a bad value exits: the test fails
    # commands named in running text are real too
    for cmd in re.findall(r"`fashionrec ([a-z][a-z-]*)", README.read_text()):
        assert cmd in names, f"README mentions `fashionrec {cmd}`"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, capsys):
    from serving_helpers import make_shop

    (block,) = code_blocks(README.read_text(), "python")
    shop = tmp_path / "shop"
    make_shop(shop)
    photo = next((shop / "images").glob("*.jpg"))
    assert "path/to/shop" in block and "path/to/new.jpg" in block
    code = block.replace("path/to/shop", str(shop)).replace("path/to/new.jpg", str(photo))
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    model = env["model"]
    assert "new-item" in model.data.item_ids  # the new arrival is a candidate
    out = capsys.readouterr().out
    assert out.count("Rec(") >= 2
