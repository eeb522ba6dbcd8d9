"""Filesystem access through fsspec: local paths, s3://, gs://, hf:// and anything fsspec knows.

Local filesystems have an atomic rename; object stores do not. `Location.atomic_rename` tells the
writer which commit protocol to use (temp name + rename, or final name + commit marker last).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class StorageError(OSError):
    """An input or output location that cannot be used, with a message saying why."""


@dataclass
class Location:
    """A folder on some filesystem: `fs` plus the root path inside it (no protocol)."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str

    @classmethod
    def of(cls, url: str, **storage_options) -> Location:
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        if protocol not in ("file", "local", "memory"):
            # object stores: no listing cache. Commit markers are found by listing, and another
            # process (a Ray worker, a rerun) may have PUT one since this process last listed:
            # a cached listing would hide it (or an `exists` answered from it would say no)
            storage_options.setdefault("use_listings_cache", False)
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        return cls(fs=fs, root=root.rstrip("/") or "/", url=url)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def atomic_rename(self) -> bool:
        return self.is_local

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def rel(self, path: str) -> str:
        """`path` relative to the root (paths from `fs.find` carry no protocol)."""
        root = self.fs._strip_protocol(self.root).rstrip("/")
        stripped = self.fs._strip_protocol(path)
        if stripped == root:
            return posixpath.basename(stripped)
        return posixpath.relpath(stripped, root)

    def open(self, rel: str, mode: str = "rb", **kw) -> IO:
        return self.fs.open(self.path(rel), mode, **kw)

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.path(rel) if rel else self.root)

    def makedirs(self, rel: str = "") -> None:
        self.fs.makedirs(self.path(rel) if rel else self.root, exist_ok=True)

    def replace(self, src_rel: str, dst_rel: str) -> None:
        """Atomic rename on local disk (os.replace)."""
        if self.is_local:
            os.replace(self.path(src_rel), self.path(dst_rel))
        else:
            self.fs.mv(self.path(src_rel), self.path(dst_rel))

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a small file so that readers see all of it or nothing."""
        if self.atomic_rename:
            self.makedirs(posixpath.dirname(rel))
            tmp = f"{rel}.tmp-{uuid.uuid4().hex[:8]}"
            with self.open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.replace(tmp, rel)
        else:  # an object PUT is all-or-nothing
            self.fs.pipe_file(self.path(rel), data)

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p)

    def check_writable(self) -> None:
        """Fail now, with a clear message, if this output location cannot be written."""
        probe = f".weaverdata-write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.makedirs()
            self.fs.pipe_file(self.path(probe), b"ok")
            self.fs.rm(self.path(probe))
        except (OSError, PermissionError) as exc:
            raise StorageError(f"output location {self.url} is not writable: {exc}") from exc
