"""The input policy (weaverdata/io/policy.py): what an untrusted input can make weaverdata read.

Paths must stay inside the input root (after symlinks); remote references are fetched only when
allowed, against a real HTTP server on loopback here, with a timeout, a byte limit, retries, and
non-public addresses refused unless the host is allowed explicitly.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from weaverdata.config import InputConfig
from weaverdata.io.policy import InputPolicy, ReferenceRejected, resolve_reference
from weaverdata.io.sources import image_from_row, plan_units, read_unit


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """An input root with an image, a secret file beside the root, and a symlink out of it."""
    root = tmp_path / "input"
    (root / "img").mkdir(parents=True)
    (root / "img" / "ok.png").write_bytes(b"inside")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET BYTES")
    (root / "img" / "link.png").symlink_to(secret)
    (root / "img" / "inner-link.png").symlink_to(root / "img" / "ok.png")
    return {"root": root, "secret": secret}


DEFAULT = InputPolicy()


def rejected(value, root: Path, policy: InputPolicy = DEFAULT, base: str = "") -> str:
    with pytest.raises(ReferenceRejected) as info:
        resolve_reference(value, str(root), base, policy)
    return info.value.reason


def test_paths_resolve_inside_the_root_only(tree):
    root, secret = tree["root"], tree["secret"]
    assert resolve_reference("img/ok.png", str(root), "", InputPolicy()) == b"inside"
    assert resolve_reference("ok.png", str(root), "img", InputPolicy()) == b"inside"  # relative to the document's folder
    assert resolve_reference("img/inner-link.png", str(root), "", InputPolicy()) == b"inside"  # a symlink that stays inside
    assert resolve_reference(str(root / "img" / "ok.png"), str(root), "", InputPolicy()) == b"inside"  # absolute, but inside
    (root / "img" / "my photo.png").write_bytes(b"spaced")
    assert resolve_reference("img/my%20photo.png?v=2#top", str(root), "", InputPolicy()) == b"spaced"  # a page's URL path names the file
    assert rejected("img/%2E%2E/%2E%2E/secret.png", root) == "outside_input"  # decoding cannot sneak out either
    for ref in (str(secret), f"file://{secret}", "img/link.png", "../secret.png", "img/../../secret.png", "file://otherhost/etc/passwd"):
        assert rejected(ref, root) == "outside_input", ref
    allowed = InputPolicy(allow_outside_root=True)
    for ref in (str(secret), f"file://{secret}", "img/link.png", "../secret.png"):
        assert resolve_reference(ref, str(root), "", allowed) == b"SECRET BYTES", ref


def test_data_uris_are_decoded_within_the_byte_limit(tree):
    assert resolve_reference("data:image/png;base64,aGVsbG8=", str(tree["root"]), "", InputPolicy()) == b"hello"
    assert rejected("data:image/png;base64," + "A" * 8000, tree["root"], InputPolicy(fetch_max_bytes=1024)) == "fetch_too_large"


def test_remote_references_are_not_fetched_unless_allowed(tree):
    for ref in ("http://example.com/a.png", "https://example.com/a.png", "//cdn.example.com/a.png", "s3://bucket/a.png", "gs://bucket/a.png"):
        assert rejected(ref, tree["root"]) == "remote_not_fetched", ref


def test_rows_and_folder_files_go_through_the_policy(tree, tmp_path):
    """JSON Lines rows naming absolute paths (as img2dataset users write them) and folder files
    that are symlinks out of the root are rejects with their reason, unless allowed."""
    root = tree["root"]
    rows = [{"image": str(tree["secret"])}, {"image": "img/ok.png"}, {"url": "http://example.com/x.png"}]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = InputConfig(path=str(root / "rows.jsonl"))
    [unit] = plan_units(cfg)
    items = [image_from_row(i, cfg, unit.root) for i in read_unit(unit, cfg)]
    assert [i.error[0] if i.error else "ok" for i in items] == ["outside_input", "ok", "remote_not_fetched"]
    assert str(tree["secret"]) in items[0].error[1]
    items = [image_from_row(i, cfg.model_copy(update={"allow_outside_root": True}), unit.root) for i in read_unit(unit, cfg)]
    assert items[0].payload["image"] == b"SECRET BYTES"

    folder = InputConfig(path=str(root / "img"))
    got = {i.locator: (i.error[0] if i.error else i.payload["image"]) for u in plan_units(folder) for i in read_unit(u, folder)}
    assert got == {"ok.png": b"inside", "inner-link.png": b"inside", "link.png": "outside_input"}


# -- fetching: a real HTTP server on loopback ----------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        _Handler.hits[self.path] = _Handler.hits.get(self.path, 0) + 1
        if self.path == "/img.png":
            self._send(200, b"PNGDATA" * 10)
        elif self.path == "/big.png":
            self._send(200, b"x" * 50_000)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
        elif self.path == "/flaky.png":  # fails once, then serves
            if _Handler.hits[self.path] == 1:
                self._send(503, b"busy")
            else:
                self._send(200, b"FLAKY-OK")
        elif self.path == "/slow.png":  # drips a byte every 0.2 s for ever (a slow-loris image)
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.hits = {}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_fetch_from_an_allowed_host(server, tree):
    allow = InputPolicy(fetch_remote=True, fetch_allow_hosts=("127.0.0.1",), fetch_timeout_s=5, fetch_backoff_s=0.05)
    root = str(tree["root"])
    assert resolve_reference(f"{server}/img.png", root, "", allow) == b"PNGDATA" * 10
    assert resolve_reference(f"{server}/redirect", root, "", allow) == b"PNGDATA" * 10  # redirects are followed (and checked again)
    assert resolve_reference(f"{server}/flaky.png", root, "", allow) == b"FLAKY-OK" and _Handler.hits["/flaky.png"] == 2  # retried
    assert rejected(f"{server}/missing.png", tree["root"], allow) == "fetch_error" and _Handler.hits["/missing.png"] == 1  # a 404 is not retried
    assert rejected(f"{server}/big.png", tree["root"], InputPolicy(fetch_remote=True, fetch_allow_hosts=("127.0.0.1",), fetch_max_bytes=10_000)) == "fetch_too_large"


def test_a_slow_server_times_out_into_a_reject(server, tree):
    policy = InputPolicy(fetch_remote=True, fetch_allow_hosts=("127.0.0.1",), fetch_timeout_s=1.0, fetch_retries=1, fetch_backoff_s=0.05)
    start = time.monotonic()
    assert rejected(f"{server}/slow.png", tree["root"], policy) == "fetch_timeout"
    assert time.monotonic() - start < 6  # two tries of about a second each, not the server's 40 s
    assert _Handler.hits["/slow.png"] == 2


def test_loopback_link_local_and_private_addresses_are_refused_by_default(server, tree):
    on = InputPolicy(fetch_remote=True, fetch_timeout_s=2)
    for ref in (f"{server}/img.png", "http://localhost:9/x.png", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
                "http://[::1]:9/x.png", "http://0.0.0.0:9/x.png"):
        assert rejected(ref, tree["root"], on) == "fetch_refused_address", ref
    assert "/img.png" not in _Handler.hits  # refused before any connection
    assert resolve_reference(f"{server}/img.png", str(tree["root"]), "", InputPolicy(fetch_remote=True, fetch_allow_private=True)) == b"PNGDATA" * 10


def test_the_policy_reads_its_settings_from_the_input_config():
    cfg = InputConfig(fetch_remote=True, fetch_allow_hosts=["Mirror.Internal"], fetch_timeout_s=3, allow_outside_root=True)
    p = InputPolicy.of(cfg)
    assert p.fetch_remote and p.allow_outside_root and p.fetch_timeout_s == 3 and p.fetch_allow_hosts == ("mirror.internal",)
    default = InputPolicy.of(InputConfig())
    assert not default.fetch_remote and not default.allow_outside_root and not default.fetch_allow_private  # nothing remote, nothing outside
