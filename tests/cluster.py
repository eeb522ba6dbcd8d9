"""A real multi-node Ray cluster on one machine: `ray start --head` plus worker nodes joining it
with `ray start --address`, each its own raylet and object store, all on loopback.

Stopping kills only this cluster's processes (found by its GCS port), never another Ray on the
machine (`ray stop` would kill every one).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    workers: int = 2
    cpus_per_node: int = 2
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dirs: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # `weaverdata` and `ray` resolve in jobs
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # a loopback test cluster: no token auth (with a ~/.ray/auth_token on the machine, a head
        # started without this turns token auth on and its workers fail with InvalidAuthToken).
        # Every driver that joins it needs the same setting: a process that has run a local Ray
        # (the test session's) has RAY_AUTH_MODE=token in its environment, and a driver started
        # with that rejects the cluster's unauthenticated calls ("Missing authorization header"),
        # the GCS then takes the driver for dead and cancels its actors
        env["RAY_AUTH_MODE"] = "disabled"
        return env

    def _ray(self, *args: str) -> None:
        proc = subprocess.run([RAY, *args], env=self.env(), capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start(self) -> LocalCluster:
        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}", "--disable-usage-stats"]
        # every node its own dashboard-agent port: Ray's default (52365) is taken by any other Ray
        # on the machine (the test session's local one), and a head whose agent cannot bind it
        # answers every `ray job submit` with "No available agent to submit job"
        self._ray("start", "--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}", *common)
        for k in range(self.workers):
            # each node its own temp dir, as on separate machines: nodes sharing one would share
            # the runtime_env working_dir cache, and one node's cleanup would delete another's
            # job directory under it
            temp = tempfile.mkdtemp(prefix=f"rw{k}-", dir="/tmp")
            self.temp_dirs.append(temp)
            self._ray("start", f"--address={self.address}", f"--temp-dir={temp}", f"--dashboard-agent-listen-port={free_port()}", *common)
        self.wait_for_nodes(self.workers + 1)
        return self

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        code = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(sum(1 for x in ray.nodes() if x['Alive']))"
        deadline = time.monotonic() + timeout
        seen = "0"
        while time.monotonic() < deadline:
            proc = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
            seen = (proc.stdout.strip().splitlines() or ["0"])[-1]
            if seen == str(n):
                return
            time.sleep(1)
        raise RuntimeError(f"cluster at {self.address}: {seen} of {n} nodes alive after {timeout} s")

    def processes(self):
        import re

        import psutil

        ours = re.compile(rf"(gcs[-_]address=\S+:|gcs[-_]server[-_]port=|address=\S+:){self.port}\b")
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            if ours.search(" ".join(p.info["cmdline"] or [])):
                mine.append(p)
        return mine

    def stop(self) -> None:
        import psutil

        procs = self.processes()
        family = {p.pid: p for p in procs}
        for p in procs:
            try:
                for c in p.children(recursive=True):
                    family[c.pid] = c
            except psutil.NoSuchProcess:
                pass
        for p in family.values():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(list(family.values()), timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
