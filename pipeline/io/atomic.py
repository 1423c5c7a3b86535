"""Atomic writes: a file or folder appears under its final name complete, or not at all, and
nothing the pipeline did not write is ever removed.

Everything is first written under a temporary name in the same folder (so the final `rename` is
atomic on POSIX file systems) and renamed at the end: `.tmp-<name>.partial-<8 random characters>`.
A crash leaves only such an entry, which no reader accepts; the next write of the same output
removes it (`remove_leftovers`: Snakemake runs one job per output, so any such entry is an
interrupted earlier attempt). A temporary folder also carries the marker file, so a folder that
merely looks like one is never removed.

Folders: `atomic_dir` replaces an existing output folder only when it carries the marker file
`OUTPUT_MARKER` (every folder written by `atomic_dir` has one) or is empty; a folder that holds
anything else is the user's, and the write stops with `OutputFolderError` before touching it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import OutputFolderError, first_few

OUTPUT_MARKER = ".mtgan-output"
_PARTIAL = ".partial-"
_RANDOM = re.compile(r"[a-z0-9_]{8}")


def _temp_prefix(final: Path) -> str:
    return f".tmp-{final.name}{_PARTIAL}"


def is_leftover(path: Path) -> bool:
    """Whether `path` is the temporary file or folder of an interrupted atomic write."""
    name = Path(path).name
    if not name.startswith(".tmp-") or _PARTIAL not in name:
        return False
    if not _RANDOM.fullmatch(name.rsplit(_PARTIAL, 1)[1]):
        return False
    return not Path(path).is_dir() or (Path(path) / OUTPUT_MARKER).is_file()


def leftovers_of(final: Path) -> list[Path]:
    """Temporary entries that interrupted writes of `final` left beside it."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    prefix = _temp_prefix(final)
    return sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix) and is_leftover(p)
                  and _RANDOM.fullmatch(p.name[len(prefix):]))


def remove_leftovers(final: Path) -> int:
    """Remove what interrupted writes of `final` left; the number removed."""
    found = leftovers_of(final)
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return len(found)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary file path next to `final`; rename it onto `final` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix="", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """JSON with sorted-insertion order kept, no NaN (invalid JSON), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, allow_nan=False)
            f.write("\n")


def write_figure(fig: Any, path: Path, dpi: int = 100, tight: bool = False) -> None:
    """A matplotlib figure as a PNG at `path`, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


def check_replaceable(folder: Path) -> None:
    """Raise OutputFolderError unless `folder` is absent, empty, or one the pipeline wrote."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder the pipeline wrote; move it away or choose another output")
    if (folder / OUTPUT_MARKER).is_file() or not any(folder.iterdir()):
        return
    shown = first_few(sorted(p.name for p in folder.iterdir()))
    raise OutputFolderError(
        f"{folder}: the output folder already holds files the pipeline did not write ({shown}; no {OUTPUT_MARKER} "
        "marker): nothing was changed; move them away or choose another output folder"
    )


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; on success it replaces `final` whole.

    `final` must be absent, empty or a folder the pipeline wrote (it carries `OUTPUT_MARKER`);
    otherwise OutputFolderError, before anything is written. The new folder carries the marker.
    """
    final = Path(final)
    check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    (tmp / OUTPUT_MARKER).write_text(f"written by the mtgan pipeline as {final.name}; replaced whole on rerun\n")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        check_replaceable(final)  # checked again: something may have appeared meanwhile
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
            (old / OUTPUT_MARKER).write_text("the previous version, being removed\n")
            os.replace(final, old / "previous")
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
