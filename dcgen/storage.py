"""Run directories and checkpoints on a local path or an object-storage URI (``s3://``, ``gs://``, ``file://``),
through the pyarrow filesystem layer that Ray Train and the stores already use.

A training run directory holds ``run.json``, ``metrics.jsonl``, ``tensorboard/``, ``best/``, ``last/`` and Ray
Train's own ``ray/`` (checkpoints, resumable). On a URI the small files are written whole (object stores do not
append), checkpoints are published by copying the finished local directory, and reading a checkpoint downloads it
once into a local cache keyed by its URI and its files' sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

CACHE_ENV = "DCGEN_CACHE"


def is_uri(path) -> bool:
    return "://" in str(path)


def join(base, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI."""
    return posixpath.join(str(base), *parts) if is_uri(base) else str(Path(base, *parts))


def resolve(path) -> str:
    """A URI as given, a local path made absolute."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def fs_path(path) -> tuple:
    """(pyarrow filesystem, path inside it) for a local path or a URI such as s3://bucket/x.zarr."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    if is_uri(path):
        return FileSystem.from_uri(str(path))
    return LocalFileSystem(), os.path.abspath(path)


_fs = fs_path


def exists(path) -> bool:
    from pyarrow.fs import FileType

    fs, p = fs_path(path)
    return fs.get_file_info(p).type != FileType.NotFound


def read_text(path) -> str:
    if not is_uri(path):
        return Path(path).read_text()
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path, text: str) -> None:
    """Write a whole file (parents created)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs, p = _fs(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def make_dir(path) -> None:
    if not is_uri(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        return
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)


def remove_dir(path) -> None:
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    from pyarrow.fs import FileType

    fs, p = _fs(path)
    if fs.get_file_info(p).type != FileType.NotFound:
        fs.delete_dir(p)


def replace_tree(src, dest) -> None:
    """Put the directory ``src`` at ``dest``, replacing what is there. Locally the old tree moves aside first and
    is deleted only after the rename, so ``dest`` is never missing its old content while ``src`` is incomplete;
    on object storage (no directory rename) the old tree is deleted and the new one moved in."""
    if not is_uri(dest):
        old = None
        if os.path.lexists(dest):
            old = f"{os.path.dirname(os.path.abspath(dest))}/.{os.path.basename(dest)}.old-{os.getpid()}"
            os.rename(dest, old)
        os.rename(src, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    remove_dir(dest)
    fs, s = _fs(src)
    fs.move(s, _fs(dest)[1])


def upload_dir(local: str | Path, dest: str) -> None:
    """Replace the directory ``dest`` (a URI) with a copy of the local directory ``local``."""
    from pyarrow.fs import LocalFileSystem, copy_files

    remove_dir(dest)
    fs, p = _fs(dest)
    fs.create_dir(p, recursive=True)
    copy_files(str(Path(local).resolve()), p, source_filesystem=LocalFileSystem(), destination_filesystem=fs)


def local_dir(path) -> Path:
    """A local directory with the contents of ``path``: the path itself, or for a URI a cached download."""
    if not is_uri(path):
        return Path(path)
    from pyarrow.fs import FileSelector, FileType, LocalFileSystem, copy_files

    fs, p = _fs(path)
    if fs.get_file_info(p).type != FileType.Directory:
        raise ValueError(f"{path}: no such directory")
    infos = sorted((i.path, i.size, i.mtime_ns) for i in fs.get_file_info(FileSelector(p, recursive=True))
                   if i.type == FileType.File)
    key = hashlib.sha1(repr((str(path), infos)).encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "dcgen-cache")
    target = root / key
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_mkdir(root)))
        copy_files(p, str(tmp), source_filesystem=fs, destination_filesystem=LocalFileSystem())
        try:
            tmp.rename(target)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


class UriPath:
    """The few ``pathlib.Path`` operations a run directory needs, on a URI: ``/``, ``exists``, ``is_file``,
    ``is_dir``, ``iterdir``, ``glob`` (one level, ``*`` patterns), ``read_text``, ``write_text``, ``mkdir``."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"UriPath({self.uri!r})"

    def __truediv__(self, part: str) -> "UriPath":
        return UriPath(posixpath.join(self.uri, str(part)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri)

    def _info(self):
        fs, p = _fs(self.uri)
        return fs.get_file_info(p)

    def exists(self) -> bool:
        return exists(self.uri)

    def is_file(self) -> bool:
        from pyarrow.fs import FileType

        return self._info().type == FileType.File

    def is_dir(self) -> bool:
        from pyarrow.fs import FileType

        return self._info().type == FileType.Directory

    def iterdir(self):
        from pyarrow.fs import FileSelector

        if not self.is_dir():
            return iter(())
        fs, p = _fs(self.uri)
        return iter(self / posixpath.basename(i.path) for i in fs.get_file_info(FileSelector(p, recursive=False)))

    def glob(self, pattern: str):
        import fnmatch

        return [c for c in self.iterdir() if fnmatch.fnmatch(c.name, pattern)]

    def read_text(self) -> str:
        return read_text(self.uri)

    def write_text(self, text: str) -> None:
        write_text(self.uri, text)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        make_dir(self.uri)

    def __lt__(self, other: "UriPath") -> bool:
        return self.uri < str(other)


def run_path(path) -> "Path | UriPath":
    """A run directory as a ``Path`` (local, absolute) or a ``UriPath``."""
    return UriPath(str(path)) if is_uri(path) else Path(path).resolve()
