"""Atomic writes: a file or folder appears under its final name complete, or not at all, and
nothing the pipeline did not write is ever removed.

Everything is first written under a temporary name in the same folder (so the final `rename` is
atomic on POSIX file systems) and renamed at the end: `.tmp-<name>.partial-<pid>-<8 random
characters>`, where pid is the writing process's. A crash leaves only such an entry, which no
reader accepts; the next write of the same output removes it (`remove_leftovers`) unless the
process named in it is still alive: a write in progress in another process is never removed. A
temporary folder also carries the marker file, so a folder that merely looks like one is never
removed.

Folders, one rule for every folder the pipeline writes (`check_replaceable`): an existing output
folder is replaced only when it is empty or carries the marker file `OUTPUT_MARKER`, and then
only when it holds nothing but what the pipeline wrote there: the marker lists the files of the
folder as it was written, and a file added since (a user's notes, say) stops the write with
`OutputFolderError` naming it, before anything is touched. A folder without the marker that
holds anything is the user's and is refused the same way. The training jobs write into their
`--out` folder file by file (to resume), so they claim it with `claim_dir`: absent, empty or
marked, or refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import FileAppeared, OutputFolderError, first_few

OUTPUT_MARKER = ".mtgan-output"
_PARTIAL = ".partial-"
# What follows `.partial-`: the writer's pid and 8 random characters (older versions: no pid).
_SUFFIX = re.compile(r"(?:(?P<pid>[0-9]+)-)?[a-z0-9_]{8}")


def _temp_prefix(final: Path) -> str:
    return f".tmp-{final.name}{_PARTIAL}{os.getpid()}-"


def is_leftover(path: Path) -> bool:
    """Whether `path` is the temporary file or folder of an atomic write (finished or not)."""
    name = Path(path).name
    if not name.startswith(".tmp-") or _PARTIAL not in name:
        return False
    if not _SUFFIX.fullmatch(name.rsplit(_PARTIAL, 1)[1]):
        return False
    return not Path(path).is_dir() or (Path(path) / OUTPUT_MARKER).is_file()


def writer_alive(path: Path) -> bool:
    """Whether the process that made temporary entry `path` is still running (a write in progress).
    A live process of that pid that started after the entry was last changed is another program
    that reuses the number, not its writer (Linux: the start time in /proc)."""
    match = _SUFFIX.fullmatch(Path(path).name.rsplit(_PARTIAL, 1)[1])
    if match is None or match["pid"] is None:
        return False
    pid = int(match["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process: it may be the writer
        pass
    started = process_start_time(pid)
    return started is None or started <= os.lstat(path).st_mtime + 1.0  # 1 s: the clocks' granularity


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks after boot
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def leftovers_of(final: Path) -> list[Path]:
    """Temporary entries that interrupted writes of `final` left beside it (those of a process
    that is still running are a write in progress, not leftovers)."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    prefix = f".tmp-{final.name}{_PARTIAL}"
    return sorted(
        p for p in final.parent.iterdir() if p.name.startswith(prefix) and is_leftover(p) and _SUFFIX.fullmatch(p.name[len(prefix) :]) and not writer_alive(p)
    )


def remove_leftovers(final: Path) -> int:
    """Remove what interrupted writes of `final` left; the number removed."""
    found = leftovers_of(final)
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return len(found)


def temporary_file(final: Path) -> Path:
    """A new empty temporary file next to `final`, named as this process's write of it (so an
    interrupted run's is recognised and removed by the next write, `remove_leftovers`)."""
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(Path(final)), suffix="", dir=Path(final).parent)
    os.close(fd)
    return Path(tmp_name)


@contextlib.contextmanager
def atomic_path(final: Path, new_only: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to `final`; rename it onto `final` if the block succeeds.
    `new_only`: never replace a file, not even one that appeared while the block ran (the name is
    taken by a hard link, which fails if it exists: FileAppeared)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = temporary_file(final)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        if not new_only:
            os.replace(tmp, final)
            return
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise FileAppeared(f"{final} appeared while this file was being made (another run?); it was left as it is and nothing was written") from None
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


def write_json_list(path: Path, parts: Iterable[Iterable[Any]], new_only: bool = False) -> int:
    """A JSON list written part by part (each part a few of its items), atomically: the bytes
    `write_json` writes of the whole list, in the memory of one part (`new_only`: see
    `atomic_path`). Returns the items written."""
    count = 0
    with atomic_path(path, new_only) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for part in parts:
                for item in part:
                    f.write((", " if count else "") + json.dumps(item, allow_nan=False))
                    count += 1
            f.write("]\n")
    return count


def write_figure(fig: Any, path: Path, dpi: int = 100, tight: bool = False) -> None:
    """A matplotlib figure as a PNG at `path`, atomically; the figure is closed."""
    from core.plots import plt

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


# Snakemake touches this file in a directory() output once the job is done.
_SNAKEMAKE_FILES = (".snakemake_timestamp",)


def _files(folder: Path) -> list[str]:
    """Every file and link under `folder` (relative, sorted), the marker and Snakemake's own left out."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if not p.is_dir() or p.is_symlink()
        if p.parent != folder or p.name not in (OUTPUT_MARKER, *_SNAKEMAKE_FILES)
    )


def _marked_files(folder: Path) -> list[str] | None:
    """The files the marker of `folder` lists (None: an older marker without a list)."""
    try:
        doc = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    return files if isinstance(files, list) else None


def _write_marker(folder: Path, final: Path, files: list[str] | None) -> None:
    doc = {
        "written_by": "the mtgan pipeline",
        "output": final.name,
        "files": files,
        "note": "replaced whole on rerun, unless files were added that this list does not name",
    }
    (folder / OUTPUT_MARKER).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def check_replaceable(folder: Path) -> None:
    """Raise OutputFolderError unless `folder` is absent, empty, or one the pipeline wrote holding
    only what the pipeline wrote there."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder the pipeline wrote; move it away or choose another output")
    if not any(folder.iterdir()):
        return
    if not (folder / OUTPUT_MARKER).is_file():
        shown = first_few(sorted(p.name for p in folder.iterdir()))
        raise OutputFolderError(
            f"{folder}: the output folder already holds files the pipeline did not write ({shown}; no {OUTPUT_MARKER} "
            "marker): nothing was changed; move them away or choose another output folder"
        )
    listed = _marked_files(folder)
    added = sorted(set(_files(folder)) - set(listed)) if listed is not None else []
    if added:
        raise OutputFolderError(
            f"{folder}: files were added to this output folder after the pipeline wrote it ({first_few(added)}): a rerun "
            "would replace the folder and lose them; nothing was changed; move them away first"
        )


def foreign_entries(root: Path) -> list[str]:
    """What under `root` a rerun could delete though the pipeline did not write it, one line each:
    files added to a folder the pipeline wrote (it carries the marker) and symbolic links below
    `root` (Snakemake deletes a job's outputs through them before the job runs). Links are never
    followed."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        links = [name for name in (*dirs, *files) if (here / name).is_symlink()]
        found += [f"{here / name}: a symbolic link (to {os.readlink(here / name)}); the pipeline never deletes or replaces through one" for name in links]
        if OUTPUT_MARKER in files and (listed := _marked_files(here)) is not None:
            added = sorted(set(_files(here)) - set(listed))
            found += [f"{here}: holds files the pipeline did not write ({first_few(added)})"] if added else []
            dirs.clear()  # the marker's list covers the folder's whole tree
    return found


def claim_dir(folder: Path) -> None:
    """Make `folder` a job's output folder, written file by file (a training job's `--out`): it must
    be absent, empty or marked as the pipeline's (a resumed job's); OutputFolderError otherwise."""
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink() and (folder / OUTPUT_MARKER).is_file():
        return
    check_replaceable(folder)  # absent or empty, or it raises
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(folder, folder, None)


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
    _write_marker(tmp, final, None)
    try:
        yield tmp
        _write_marker(tmp, final, _files(tmp))
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
