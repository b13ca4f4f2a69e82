"""Atomic file and directory writes: a reader never sees half of an output."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glasses.errors import OutputError


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit


def no_space(error: OSError, path: Path) -> OutputError:
    """The one-line error for an OSError of NO_SPACE while writing `path`."""
    return OutputError(f"no space left to write {path} ({error.strerror}); free space on its disk or pass "
                       "another --work-dir; the previous outputs are intact")


def reserve(path: Path) -> None:
    """Allocates every block of the file at `path` now, so that writing it through a memory map
    cannot meet a full disk later (a SIGBUS, with no message).

    Raises:
        OutputError: there is no room for it.
    """
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(error, path) from error
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it too)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMPORARY_SUFFIX = ".glasses-tmp"  # every temporary name ends so; the only names a work dir's sweep removes


@contextmanager
def temporary_file(path: Path, suffix: str = TEMPORARY_SUFFIX) -> Iterator[Path]:
    """Yields a temporary name beside `path`; what is written there becomes `path` if the block succeeds.

    The file gets the permissions of any newly created file (mkstemp's are owner-only), so
    the outputs can be shared. On failure the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(error, path) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Writes text to a temporary name beside `path`, then renames it into place."""
    with temporary_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """Writes JSON atomically (sorted keys, indented, paths as strings)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def process_temp_dir(parent: Path, name: str) -> Iterator[Path]:
    """Points this process's temporary files (`tempfile`, TMPDIR for its children) at a folder of
    ours under `parent`, and removes it on the way out.

    TensorFlow's autograph writes every function it converts to a file in the temp dir and
    removes it only at interpreter exit, which a role process skips (glasses.search.__main__): each
    search left files in /tmp, never removed. In a work dir the folder is a temporary
    (`.<name>.<random>` + TEMPORARY_SUFFIX), so one left by a killed process goes with the next
    run's sweep. Set it before anything has asked tempfile for its directory.
    """
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TEMPORARY_SUFFIX, dir=parent))
    before = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = before[0]
        os.environ.pop("TMPDIR") if before[1] is None else os.environ.update(TMPDIR=before[1])
        shutil.rmtree(folder, ignore_errors=True)


OUTPUT_MARKER = ".glasses-output"  # in every folder atomic_dir makes: only such a folder is ever replaced


@contextmanager
def atomic_dir(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary directory that becomes `path` only if the block succeeds.

    The new folder carries `OUTPUT_MARKER`. An existing `path` is replaced only if it carries
    the marker too (glasses made it) or is an empty directory; with `replace=False` only an
    empty directory is. Anything else (a user's folder, a symlink) is never removed: the move
    raises OutputError (with `replace=False`, OSError: another writer's output, say). On
    failure the temporary directory is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).touch()
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's are owner-only
        _move_over(tmp, path, replace)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise no_space(error, path) from error
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_over(tmp: Path, path: Path, replace: bool) -> None:
    """Renames `tmp` to `path`, first setting aside an old output of ours (removed after)."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    if not replace or _is_empty_dir(path):
        path.rmdir()  # only an empty directory goes; anything else is kept and raises here
        os.replace(tmp, path)
        return
    if path.is_symlink() or not (path / OUTPUT_MARKER).is_file():
        raise OutputError(f"refusing to replace {path}: glasses did not make it (no {OUTPUT_MARKER} "
                          "marker inside); move it away or choose another work dir")
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    os.replace(path, old / path.name)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
