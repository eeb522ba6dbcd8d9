"""Input policy: what an input (a web page, a JSON Lines row, a Parquet row, a tar, an HF row) can
make weaverdata read. One place, used by every reader.

Inputs are untrusted: a crawled page or a row can name any path or URL. The rules:

* a path (relative, absolute, or a ``file://`` URL) must resolve *inside the input root*, after
  following symlinks, or it is refused ``outside_input`` (``input.allow_outside_root: true``
  lifts this, for example for JSON Lines that point at absolute paths on purpose);
* a remote reference (``http(s)://``, ``s3://``, ``gs://``, ...) is fetched only with
  ``input.fetch_remote: true``, else refused ``remote_not_fetched``. When fetched: a timeout for
  the whole transfer, a byte limit, retries with backoff, at most a few redirects (each checked
  again), and HTTP(S) addresses that resolve to private, loopback, link-local or other
  non-public networks (cloud metadata endpoints live there) refused ``fetch_refused_address``
  unless ``input.fetch_allow_private`` or the host is listed in ``input.fetch_allow_hosts``;
* ``data:`` URIs (images inlined in a page) are decoded, within the same byte limit.

Every refusal is a :class:`ReferenceRejected` with a reason and a detail; readers turn it into a
reject row (or a dropped image of a document), never an exception that ends the run.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import os
import posixpath
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from weaverdata.io.storage import Location

REMOTE_READ_REASONS = ("remote_not_fetched", "fetch_refused_address", "fetch_timeout", "fetch_too_large", "fetch_error")


class ReferenceRejected(ValueError):
    """An image reference the policy refuses, or a fetch that failed: reason + detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class InputPolicy:
    allow_outside_root: bool = False
    fetch_remote: bool = False
    fetch_timeout_s: float = 10.0
    fetch_max_bytes: int = 32 * 2**20
    fetch_retries: int = 2
    fetch_backoff_s: float = 0.5
    fetch_allow_private: bool = False
    fetch_allow_hosts: tuple[str, ...] = ()
    max_redirects: int = 3

    @classmethod
    def of(cls, cfg: Any) -> InputPolicy:
        """From an :class:`~weaverdata.config.InputConfig`."""
        return cls(allow_outside_root=cfg.allow_outside_root, fetch_remote=cfg.fetch_remote, fetch_timeout_s=cfg.fetch_timeout_s,
                   fetch_max_bytes=cfg.fetch_max_bytes, fetch_retries=cfg.fetch_retries, fetch_allow_private=cfg.fetch_allow_private,
                   fetch_allow_hosts=tuple(h.lower() for h in cfg.fetch_allow_hosts))


def scheme_of(value: str) -> str:
    """The URL scheme of a reference ('' for a plain path). A Windows-looking 'c:' is no scheme.

    >>> scheme_of("img/a.png"), scheme_of("HTTP://x/a.png"), scheme_of("data:image/png;base64,AA"), scheme_of("file:///a")
    ('', 'http', 'data', 'file')
    """
    head, sep, _ = value.partition(":")
    if not sep or len(head) < 2 or not head[0].isalpha() or not all(c.isalnum() or c in "+.-" for c in head):
        return ""
    return head.lower()


def resolve_reference(value: Any, root: str, base: str, policy: InputPolicy) -> bytes:
    """The bytes an image reference of an input names (bytes, {bytes, path}, a path relative to
    ``base`` inside ``root``, a URL), or ReferenceRejected / OSError / TypeError / ValueError."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return resolve_reference(value["path"], root, base, policy)
        raise ValueError("image dict has neither bytes nor path")
    if not isinstance(value, str):
        raise TypeError(f"unsupported image value of type {type(value).__name__}")
    ref = value.strip()
    if ref.startswith("//"):  # a protocol-relative URL (common in pages): remote, not a path
        ref = "https:" + ref
    scheme = scheme_of(ref)
    if scheme == "data":
        return _data_uri(ref, policy.fetch_max_bytes)
    if scheme == "file":
        parsed = urllib.parse.urlparse(ref)
        if parsed.netloc not in ("", "localhost"):
            raise ReferenceRejected("outside_input", f"{_short(ref)}: a file URL on another host")
        return _read_path(urllib.parse.unquote(parsed.path), root, policy, shown=ref)
    if scheme:
        return fetch(ref, policy)
    try:
        return _read_local(ref, root, base, policy)
    except FileNotFoundError:
        # a page's reference is a URL path: "my%20photo.png?v=2" names the file "my photo.png"
        as_url = urllib.parse.unquote(urllib.parse.urlsplit(ref).path)
        if not as_url or as_url == ref:
            raise
        return _read_local(as_url, root, base, policy)


def _read_local(ref: str, root: str, base: str, policy: InputPolicy) -> bytes:
    if ref.startswith("/"):
        return _read_path(ref, root, policy, shown=ref)
    rel = posixpath.normpath(posixpath.join(base, ref))
    if rel == ".." or rel.startswith("../"):
        if not policy.allow_outside_root:
            raise ReferenceRejected("outside_input", f"{_short(ref)} leaves the input root")
        return _read_path(posixpath.join(Location.of(root).root, rel), root, policy, shown=ref)
    loc = Location.of(root)
    check_inside(loc, rel, policy)
    return loc.fs.cat_file(loc.path(rel))


def _read_path(path: str, root: str, policy: InputPolicy, *, shown: str) -> bytes:
    """An absolute path: inside the root (local roots only) or allowed outside it."""
    loc = Location.of(root)
    if loc.is_local:
        real_root = os.path.realpath(loc.root)
        real = os.path.realpath(path)
        if _inside(real, real_root):
            return loc.fs.cat_file(real)
    if not policy.allow_outside_root:
        raise ReferenceRejected("outside_input", f"{_short(shown)} is outside the input root")
    with open(path, "rb") as f:
        return f.read()


def check_inside(loc: Location, rel: str, policy: InputPolicy) -> None:
    """Refuse a file of a local input root whose real path (symlinks followed) leaves the root."""
    if policy.allow_outside_root or not loc.is_local:
        return
    real_root = os.path.realpath(loc.root)
    real = os.path.realpath(loc.path(rel))
    if not _inside(real, real_root):
        raise ReferenceRejected("outside_input", f"{_short(rel)} resolves to {_short(real)}, outside the input root")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _data_uri(ref: str, max_bytes: int) -> bytes:
    head, sep, payload = ref.partition(",")
    if not sep:
        raise ValueError("data URI without a comma")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ReferenceRejected("fetch_too_large", f"data URI over {max_bytes} bytes")
    if head.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"data URI: {exc}") from exc
    return urllib.parse.unquote_to_bytes(payload)


# -- remote fetching ----------------------------------------------------------------------------

def fetch(url: str, policy: InputPolicy) -> bytes:
    """A remote reference's bytes under the policy (see the module docstring)."""
    if not policy.fetch_remote:
        raise ReferenceRejected("remote_not_fetched", f"{_short(url)} (input.fetch_remote is off)")
    scheme = scheme_of(url)
    attempt, last = 0, None
    while True:
        try:
            if scheme in ("http", "https"):
                return _fetch_http(url, policy)
            return _fetch_fsspec(url, policy)
        except ReferenceRejected as exc:
            if exc.reason not in ("fetch_timeout", "fetch_error") or getattr(exc, "final", False):
                raise
            last = exc
        attempt += 1
        if attempt > policy.fetch_retries:
            raise last
        time.sleep(policy.fetch_backoff_s * 2 ** (attempt - 1))


def _final(reason: str, detail: str) -> ReferenceRejected:
    exc = ReferenceRejected(reason, detail)
    exc.final = True  # not worth a retry (a 404, a refused address)
    return exc


def _fetch_fsspec(url: str, policy: InputPolicy) -> bytes:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read(policy.fetch_max_bytes + 1)
    except FileNotFoundError as exc:
        raise _final("fetch_error", f"{_short(url)}: not found ({exc})") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise ReferenceRejected("fetch_error", f"{_short(url)}: {type(exc).__name__}: {exc}") from exc
    if len(data) > policy.fetch_max_bytes:
        raise _final("fetch_too_large", f"{_short(url)}: over {policy.fetch_max_bytes} bytes")
    return data


def public_address(ip: str) -> bool:
    """Whether an address is on the public internet (not private, loopback, link-local, ...).

    >>> [public_address(a) for a in ("8.8.8.8", "127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1")]
    [True, False, False, False, False, False]
    """
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _checked_address(host: str, port: int, policy: InputPolicy) -> str:
    """The address to connect to: resolved once here (so a rebinding DNS cannot swap it after
    the check), refused when it is not public unless allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ReferenceRejected("fetch_error", f"cannot resolve {host}: {exc}") from exc
    allowed = policy.fetch_allow_private or host.lower() in policy.fetch_allow_hosts
    for *_, sockaddr in infos:
        ip = sockaddr[0]
        if allowed or public_address(ip):
            return ip
    raise _final("fetch_refused_address", f"{host} resolves to {infos[0][4][0]}, not a public address (input.fetch_allow_hosts / fetch_allow_private allow it)")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _fetch_http(url: str, policy: InputPolicy) -> bytes:
    deadline = time.monotonic() + policy.fetch_timeout_s
    for _ in range(policy.max_redirects + 1):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise _final("fetch_error", f"{_short(url)}: not an http(s) URL with a host")
        https = parsed.scheme == "https"
        port = parsed.port or (443 if https else 80)
        ip = _checked_address(parsed.hostname, port, policy)
        conn_cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
        conn = conn_cls(parsed.hostname, ip, port, timeout=max(0.1, deadline - time.monotonic()))
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        try:
            conn.request("GET", path, headers={"User-Agent": "weaverdata", "Accept": "image/*,*/*;q=0.5"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
                continue
            if resp.status >= 400:
                err = ReferenceRejected("fetch_error", f"{_short(url)}: HTTP {resp.status}")
                if resp.status < 500 and resp.status != 429:
                    err.final = True
                raise err
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.fetch_max_bytes:
                raise _final("fetch_too_large", f"{_short(url)}: Content-Length {length} over {policy.fetch_max_bytes} bytes")
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReferenceRejected("fetch_timeout", f"{_short(url)}: over {policy.fetch_timeout_s} s")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > policy.fetch_max_bytes:
                    raise _final("fetch_too_large", f"{_short(url)}: over {policy.fetch_max_bytes} bytes")
                chunks.append(chunk)
        except TimeoutError as exc:
            raise ReferenceRejected("fetch_timeout", f"{_short(url)}: over {policy.fetch_timeout_s} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ReferenceRejected("fetch_error", f"{_short(url)}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
    raise _final("fetch_error", f"{_short(url)}: more than {policy.max_redirects} redirects")
