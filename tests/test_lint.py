"""The code's own checks, inside the test command: ruff's lint and format, and import-linter's
layer contracts (pyproject.toml), each run as a user would run it from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "ruff", "check", "."], [sys.executable, "-m", "ruff", "format", "--check", "."], [str(BIN / "lint-imports")]],
    ids=["ruff check", "ruff format", "lint-imports"],
)
def test_the_code_passes_its_checks(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_no_function_of_the_stages_or_jobs_is_over_80_lines() -> None:
    """Each function does one named step (torchvision's RoIHeads is the model): a longer one is split."""
    import ast

    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in ("pipeline", "jobs")
        for path in sorted((REPO / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert long == []
