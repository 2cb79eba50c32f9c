"""Content-addressed artefacts: every cached output is a folder `<root>/<kind>-<key>`.

The key hashes everything that makes the output (content fingerprints, versions, settings), so a
changed input gets a folder of its own and an unchanged one finds its finished folder. A folder is
complete once its marker, `artefact.json`, is there: written last, through a temporary name and a
rename, it records what made the artefact and whatever the artefact's readers need (counts, an
index). A folder without a marker is unfinished; a step that keeps finished parts (chunks, shards)
resumes in it, holding the folder's lock (`building`) so that a second process waits instead of
building over it, and one that builds the whole folder at once builds it beside it, under
`<folder>.tmp-<host>-<pid>`, and renames it into place (`commit_folder`). Every cache of classit is
one of these: the synthetic corpus, cleaned lines, tokenizer and blocks, encoded instruction data,
teacher-written Q&A, the demo teacher, and the base models a sweep records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from classit.config import LoadError, config_hash, validation_line
from classit.units import one_line

MARKER = "artefact.json"


def artefact_dir(root: str | Path, kind: str, *made_of) -> Path:
    """`<root>/<kind>-<hash of made_of>`: where the artefact made of these inputs lives."""
    return Path(root) / f"{kind}-{config_hash(*made_of)}"


def files_fingerprint(files) -> str:
    """A hash of the files' names and bytes: the content fingerprint of an input given by path
    (corpus files, a checkpoint), read once per process while each file's size and mtime stay."""
    return _files_hash(stat_signature(files))


def stat_signature(files) -> tuple[tuple[str, int, int], ...]:
    """Each file's path, size and mtime: what tells a process that a file it read may have changed."""
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(files))


@lru_cache(maxsize=32)
def _files_hash(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_marker(folder: Path) -> dict:
    """What `mark_complete` wrote: `made_by`, `completed` (Unix seconds) and the artefact's own fields."""
    path = folder / MARKER
    return parse_json(path.read_text(), path)


def parse_json(text: str | bytes, source, line: int | None = None) -> Any:
    """JSON read from `source` (a file; with `line`, that line of it); a damaged or malformed one
    ends in an error that names it (formatted only then: a task file has tens of thousands of lines)."""
    try:
        return json.loads(text)
    except ValueError as err:
        raise LoadError(f"{source}{f':{line}' if line else ''}: not valid JSON ({one_line(err)})") from err


def parse_json_as(kind: type, text: str | bytes, source) -> Any:
    """JSON read from `source` as a `kind` (a dataclass, or a container of them); valid JSON that is no
    `kind` (a list, a field missing, of the wrong type or unknown to it) ends in one line naming the
    file and the field."""
    from pydantic import ValidationError

    try:
        return _adapter(kind).validate_python(parse_json(text, source))
    except ValidationError as err:
        raise LoadError(validation_line(err, str(source))) from None


@lru_cache
def _adapter(kind: type):
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def commit_file(write: Callable[[str], object], path: str | Path, suffix: str = "") -> None:
    """`write(tmp)` then rename `tmp` to `path`: a kill never leaves a partial file at `path`. The
    temporary name is hidden (a leading dot), so no pattern of finished names (`chunk-*.npz`) sees
    one being written. `suffix`: an ending the writer insists on (numpy's `.npz`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    write(str(tmp))
    tmp.rename(path)


def mark_complete(folder: Path, made_by: dict, **fields) -> dict:
    """Write the folder's marker (last, by rename): from now on the artefact is complete."""
    marker = {"made_by": made_by, "completed": time.time(), **fields}
    commit_file(lambda tmp: Path(tmp).write_text(json.dumps(marker, indent=1, default=str) + "\n"), folder / MARKER)
    return marker


@contextmanager
def building(folder: Path) -> Iterator[None]:
    """Held while `folder` is built in place: an exclusive lock on `<folder>.lock`. A second process
    preparing the same artefact (another sweep or command on a shared cache) waits here and then finds
    it complete, instead of writing the same parts and deleting what the first still reads. The
    kernel releases a killed holder's lock; Linux's NFS client takes `flock` on the server, for every node."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f"{folder.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def commit_folder(folder: Path, build: Callable[[Path], dict | None], made_by: dict) -> dict:
    """Build the whole artefact in a temporary folder beside it (`build(tmp)` returns the marker's
    fields), mark it complete there and rename it into place; returns the marker. Two processes
    building the same artefact at once (two trials, on any nodes) both finish; the first rename wins."""
    prefix = f"{folder.name}.tmp-{socket.gethostname()}-"
    remove_abandoned(folder.parent, prefix)
    tmp = folder.with_name(f"{prefix}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    marker = mark_complete(tmp, made_by, **(build(tmp) or {}))
    if folder.exists() and not is_complete(folder):
        shutil.rmtree(folder, ignore_errors=True)  # an older, unfinished build
    try:
        tmp.rename(folder)
    except OSError:  # another process renamed its build into place first
        if not is_complete(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return read_marker(folder)
    return marker


def remove_abandoned(parent: Path, prefix: str) -> None:
    """Folders `<prefix><pid>[-...]` in `parent` (temporary builds, checkpoints being written) that
    processes of this host left when they were killed: those whose process is gone."""
    for tmp in parent.glob(f"{prefix}*") if parent.is_dir() else ():
        pid = tmp.name.removeprefix(prefix).split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this id runs (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
