"""A real S3-compatible server on loopback for tests: moto's server mode (`python -m moto.server`),
spoken to over HTTP by s3fs exactly as AWS S3 or MinIO would be.

The endpoint and credentials reach every process (the test, the `weaverdata` CLI it starts, and
that CLI's Ray workers) through the standard AWS environment variables, as docs/cluster.md tells
users to configure their own object store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.cluster import free_port


@dataclass
class S3Server:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "weaverdata-test",
            "AWS_SECRET_ACCESS_KEY": "weaverdata-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env()},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server did not listen on port {self.port} within 60 s")

    def filesystem(self):
        """An s3fs filesystem on this server (not fsspec's instance cache: a fresh one)."""
        import s3fs

        return s3fs.S3FileSystem(key="weaverdata-test", secret="weaverdata-test", endpoint_url=self.endpoint, skip_instance_cache=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
