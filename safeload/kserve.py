"""KServe storage initializer: ``python -m safeload.kserve safeload://NAME DEST``.

KServe runs a storage initializer as an init container with two arguments, the InferenceService's
``storageUri`` and the folder the model server reads (``/mnt/models``); a ``ClusterStorageContainer`` whose
``supportedUriFormats`` has the prefix ``safeload://`` and whose container command is ``python -m
safeload.kserve`` makes KServe call this module for those URIs (docs/deploy.md has the manifests).

``NAME`` is a ``[models]`` entry of the policy found as everywhere else (``$SAFELOAD_POLICY``,
``./trust.toml``, ``~/.config/safeload/trust.toml``). It resolves exactly as
:func:`safeload.hub.snapshot_download` resolves it (fetched from the allowlisted registry at the pinned
revision and checked against every pin and signature into the store), then each verified file is copied
into ``DEST`` under its relative path and hashed again as it is written: ``DEST`` receives exactly the
pinned bytes, as regular files, never through a symbolic link. ``DEST`` is made if missing; a file already
there with the same bytes is kept, one with other bytes (or anything that is not a regular file) is a
refusal, checked for every file before the first is written.

Exit codes are the command line's: 0 copied, 1 refused (a name the policy does not pin, a hash or
signature mismatch, a URI that is not ``safeload://``, a different file in the way), 2 error. The reason
is one line on stderr.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from safeload._files import create_beside
from safeload._relpath import is_safe_relpath
from safeload._trust.hashing import copy_and_hash, hash_fd
from safeload.errors import IntegrityError, UntrustedSourceError

__all__ = ["main"]

SCHEME = "safeload://"
_USAGE = "usage: python -m safeload.kserve safeload://NAME DEST"
_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _name(uri: str) -> str:
    if not uri.startswith(SCHEME) or not uri[len(SCHEME) :].strip("/"):
        raise UntrustedSourceError(
            f"{uri!r} is not a safeload:// URI; this storage initializer serves only names from the policy's "
            "[models], as safeload://NAME"
        )
    return uri[len(SCHEME) :].strip("/")


def _check_folder(path: Path, dest: Path) -> None:
    """Refuse a folder under ``dest`` that is a symbolic link or not a folder (missing is fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{path} is in the way in {dest}: not a folder; refusing to write through it")


def _plan(folder: Path, files: Mapping[str, str], dest: Path) -> list[str]:
    """The files to copy; refuses before anything is written if any of them cannot be."""
    todo: list[str] = []
    for rel in sorted(files):
        if not is_safe_relpath(rel):
            raise IntegrityError(f"{rel!r} is not a relative file name")
        target = dest / rel
        parent = dest
        for part in rel.split("/")[:-1]:
            parent = parent / part
            _check_folder(parent, dest)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            todo.append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{target} is in the way: not a regular file; refusing to overwrite it")
        fd = os.open(target, _O_READ)
        try:
            digest, _ = hash_fd(fd, mapped=False)
        finally:
            os.close(fd)
        if digest != files[rel]:
            raise IntegrityError(
                f"{target} already exists with other bytes ({digest}) than the pinned {files[rel]}; refusing "
                "to overwrite it (empty the folder first)"
            )
    return todo


def _copy(src: Path, target: Path, digest: str) -> None:
    src_fd = os.open(src, _O_READ)
    try:
        if not stat.S_ISREG(os.fstat(src_fd).st_mode):
            raise IntegrityError(f"{src} is not a regular file in the store")
        fd, tmp = create_beside(target)
        try:
            got, _ = copy_and_hash(src_fd, fd)
            if got != digest:
                raise IntegrityError(
                    f"{src} changed while it was copied: {got}, pinned {digest}",
                    path=str(src), expected=digest, actual=got,
                )
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, target)
    finally:
        os.close(src_fd)


def initialize(uri: str, dest: str | os.PathLike[str]) -> list[str]:
    """Resolve ``uri`` (``safeload://NAME``) through the policy and copy its verified files into ``dest``.

    Returns the relative paths now in ``dest``.

    Raises:
        UntrustedSourceError: not a ``safeload://`` URI, or a name the policy does not pin.
        IntegrityError, SignatureError: the bytes or signature do not match the policy, or a different
            file is in the way in ``dest``.
        SafeloadError, OSError: as :func:`safeload.hub.snapshot_download`, or ``dest`` cannot be written.
    """
    from safeload.hub import _fetch  # snapshot_download's resolution, with the digests it verified

    fetched = _fetch(_name(uri), None, None, None)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    if out.is_symlink() or not out.is_dir():
        raise IntegrityError(f"{out} is not a folder")
    for rel in _plan(fetched.folder, fetched.files, out):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(fetched.folder / rel, target, fetched.files[rel])
    return sorted(fetched.files)


def main(argv: Sequence[str] | None = None) -> int:
    from safeload.cli import guarded
    from safeload.cli._ui import EXIT_ERROR, EXIT_OK

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(_USAGE, file=sys.stderr)
        return EXIT_ERROR
    uri, dest = args

    def run() -> int:
        copied = initialize(uri, dest)
        print(f"safeload: {uri}: {len(copied)} verified files in {dest}", file=sys.stderr)
        return EXIT_OK

    # One line per failure: the init container's log is read a line per event.
    return guarded(run, about=uri, one_line=True)


if __name__ == "__main__":
    sys.exit(main())
