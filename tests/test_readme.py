"""The README is a guide a newcomer reads in five minutes: short, its two commands on its first
screen, the test command the one CI runs, no commit hashes or issue numbers, every link alive."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text()
FIRST_SCREEN = "\n".join(README.splitlines()[:40])
RUN = "pip install -e . && snakemake --cores 8 eval_coco"
TEST = "pip install -e '.[test]' && pytest"


def test_the_readme_is_short_and_holds_no_history() -> None:
    assert len(README.splitlines()) <= 150
    assert re.findall(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", README) == []  # no commit hash
    assert re.findall(r"\b[Ii]ssue \d+|#\d+\b", README) == []


def test_its_two_commands_are_on_the_first_screen_and_ci_runs_the_test_command() -> None:
    assert RUN in FIRST_SCREEN and TEST in FIRST_SCREEN
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && " in ci and ci.rstrip().endswith("pytest")


def test_every_link_of_the_readme_is_a_file_of_the_repository() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links and [link for link in links if not link.startswith("http") and not (REPO / link).exists()] == []
