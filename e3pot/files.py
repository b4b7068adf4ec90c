"""How every e3pot command writes files: one rule, one helper.

The rule (said in each command's ``--help``):

- an output is never one of the command's inputs (compared as resolved paths, links followed);
- an output that already exists is replaced only with ``--overwrite``;
- an output is written to a fresh temporary file in the target's own folder, with a name no
  other file has, and moved over the target only when it is complete: a failed command leaves
  the target as it was and removes nothing but its own temporary file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterable, Iterator, Sequence

OVERWRITE_HELP = ("replace output files that already exist (without it an existing output is refused; "
                  "an output is never one of the inputs)")


class OutputError(ValueError):
    """An output path that the rule above refuses; the message names the option and the path."""


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (following links); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, option: str = "-o", *, inputs: Sequence[str] = (), overwrite: bool = False,
                 others: Iterable[tuple] = (), missing_folder: str = "refuse") -> str:
    """Refuse ``path`` as the output of ``option`` when the rule forbids it; return it unchanged.

    ``inputs`` are the command's input paths; ``others`` are ``(option, path)`` pairs of the
    command's other outputs, which must differ from this one. ``missing_folder``: what a folder of
    ``path`` that does not exist gets: "refuse" (an error), "make" (it is made) or "leave" (someone
    else makes it later, as a training run's logger makes its run folder).
    """
    if not path:
        raise OutputError(f"{option}: an empty file name")
    for source in inputs:
        if source and same_file(path, source):
            raise OutputError(f"{option} {path} is also an input ({source}); write the output to another file")
    for other_option, other in others:
        if other and other_option != option and same_file(path, other):
            raise OutputError(f"{option} {path} and {other_option} {other} are the same file; give each its own")
    if os.path.isdir(path):
        raise OutputError(f"{option} {path} is a folder; give a file name (for example {os.path.join(path, 'out')})")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        if missing_folder == "leave":
            return path
        if missing_folder != "make":
            raise OutputError(f"{option} {path}: the folder {folder} does not exist")
        try:
            os.makedirs(folder)
        except OSError as exc:
            raise OutputError(f"{option} {path}: cannot make the folder {folder} ({exc.strerror})") from None
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{option} {path} exists; pass --overwrite to replace it, or choose another name")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{option} {path}: cannot write in the folder {folder} (permission denied)")
    return path


def temporary_path(path: str, directory: bool = False) -> str:
    """A new, empty file (or folder) next to ``path`` whose name no other file has."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        if directory:
            return tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=folder)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # the permissions an ordinary new file gets
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    Only the temporary file this function made is ever removed.
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (complete or not at all)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path



APPEND_SUFFIXES = (".xyz", ".extxyz")


def check_append_output(path, option: str, *, inputs: Sequence[str] = ()) -> str:
    """Refuse ``path`` as an extended XYZ file that structures are appended to (never truncated) when the rule
    above forbids it or its name or content says another format; return it as a string.

    Checked once, before any work: the path is not an input, its folder exists and can be written, its name
    ends in ``.xyz`` or ``.extxyz`` (the format follows the name), and a file already there is extended XYZ
    text (so that frames are never appended to a model, a binary trajectory or a database).
    """
    path = os.fspath(path)
    if not path:
        raise OutputError(f"{option}: an empty file name")
    for source in inputs:
        if source and same_file(path, source):
            raise OutputError(f"{option} {path} is also an input ({source}); give the structures another file")
    if os.path.isdir(path):
        raise OutputError(f"{option} {path} is a folder; give an extended XYZ file (for example "
                          f"{os.path.join(path, 'flagged.xyz')})")
    if not path.lower().endswith(APPEND_SUFFIXES):
        raise OutputError(f"{option} {path}: structures are appended as extended XYZ, which keeps their per-atom "
                          "predictions and uncertainties; give a name ending in .xyz or .extxyz")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OutputError(f"{option} {path}: cannot write there (permission denied)")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        first = head.split(b"\n", 1)[0].strip()
        if b"\0" in head or not first.isdigit():
            raise OutputError(f"{option} {path} exists and is not an extended XYZ file (its first line is not an "
                              "atom count); structures are appended to it, so give a new name or an extended XYZ file")
    return path


def append_extxyz(path: str, atoms) -> None:
    """Append one structure (with its ``info`` and ``arrays``) to the extended XYZ file ``path``, checked by
    :func:`check_append_output`."""
    import ase.io

    ase.io.write(path, atoms, format="extxyz", append=True)
