"""Where a batch writes: a local (or shared) directory, or a URL through papermill's I/O handlers.

A local path is written atomically (temporary file, fsync, rename, fsync of the directory) so a
reader never sees half a manifest, even after a crash. A URL (`abfs://…`, `s3://…`, or any scheme
registered with `papermill.iorw.papermill_io`) is written one whole object per call, which object
stores make atomic themselves.

Example:
    >>> import tempfile
    >>> out = Output(tempfile.mkdtemp())
    >>> out.write_text("a/b.txt", "hello")
    >>> out.read_text("a/b.txt"), out.read_text("missing.txt")
    ('hello', None)
    >>> Output("s3://bucket/nightly").is_url
    True
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from papermill.iorw import LocalHandler, papermill_io

from dwlib.errors import DwError


def is_url(location: str) -> bool:
    """True for `scheme://…` locations other than `file://` (those are paths).

    >>> is_url("abfs://container/runs"), is_url("runs/nightly"), is_url("C:/runs")
    (True, False, False)
    """
    scheme, sep, _ = location.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


class Output:
    """A batch's output location (`dw batch --out`): relative names below it are read and written."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        self.is_url = is_url(text)
        self.location = text.rstrip("/") if self.is_url else str(Path(text).resolve())
        if self.is_url and isinstance(papermill_io.get_handler(self.location, []), LocalHandler):
            scheme = self.location.split("://", 1)[0]
            raise DwError(f"no papermill I/O handler reads or writes {scheme}:// URLs: install the one "
                          "for it (e.g. pip install 'papermill[azure]' for abfs://, 'papermill[s3]' for "
                          "s3://) or use a directory the workers share")

    def __str__(self) -> str:
        return self.location

    def join(self, *names: str) -> str:
        """The location of `names` below this output (a path or a URL)."""
        if self.is_url:
            return "/".join([self.location, *names])
        return str(Path(self.location, *names))

    def write_text(self, name: str, text: str) -> None:
        """Write `name` as UTF-8 text (see `write_bytes`)."""
        self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write `name` byte for byte (parents created for a path; replaced atomically). A URL's
        handler gets the bytes as they are, so evidence files keep the sha256 their record lists
        (papermill's Azure Blob and local handlers take bytes)."""
        target = self.join(name)
        if self.is_url:
            papermill_io.write(data, target, extensions=[])
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                # On disk before the rename: a crash (or power loss) then leaves the old file or the
                # new one, never an empty or half-written one.
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sync_dir(path.parent)

    def read_text(self, name: str) -> str | None:
        """The text of `name`, or None when there is none."""
        return read_location(self.join(name))


def _sync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; the rename is what it is
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_location(location: str) -> str | None:
    """The text at a path or URL, or None when nothing is there."""
    if not is_url(location):
        try:
            return Path(location).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    try:
        return str(papermill_io.read(location, extensions=[]))
    except (OSError, KeyError):  # handlers say "missing" their own way: a FileNotFoundError or a KeyError
        return None
