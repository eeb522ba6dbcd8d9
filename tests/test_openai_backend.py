"""The OpenAI-compatible backend against a real `vllm serve` of the tiny VLM on loopback.

Results match the offline engine's ids; a request that times out is a reject with its reason;
a server killed mid-run ends the run with a clear error and keeps what finished, and a rerun
with the server back generates only the rest (the others come from the cache).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_vllm_engine import photo_requests
from weaverdata.config import EngineConfig, OpenAIConfig, SamplingConfig
from weaverdata.engines.captioner import Captioner, EngineUnavailable
from weaverdata.engines.prompts import load_prompt
from weaverdata.engines.vllm_backend import VLLM_CPU_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`vllm serve` in its own process group on 127.0.0.1."""

    def __init__(self, model: Path, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        env = {**os.environ, **VLLM_CPU_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "HF_HUB_OFFLINE": "1"}
        # `python -m ...api_server` is `vllm serve` without its CLI wrapper, which looks up the
        # distribution "vllm" by name (the CPU build is distributed as vllm-cpu)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", "tiny-vlm",
               "--max-model-len", "1024", "--enforce-eager", "--dtype", "float32", "--limit-mm-per-prompt", '{"image": 1}', "--seed", "0"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"vllm serve did not become healthy: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    srv = VLLMServer(tiny_models["vlm"], free_port(), tmp_path_factory.mktemp("vllm-serve") / "server.log")
    srv.start()
    yield srv
    srv.kill()


def cfg_for(server, **openai) -> EngineConfig:
    return EngineConfig(
        backend="openai",
        model="tiny-vlm",
        max_pixels=224 * 224,
        sampling=SamplingConfig(max_tokens=16, temperature=0.8, seed=1),
        retries_on_failed_check=0,
        openai=OpenAIConfig(**{"base_url": f"http://127.0.0.1:{server.port}/v1", "max_concurrency": 4, "timeout_s": 60, "max_retries": 2, "backoff_s": 0.2, **openai}),
    )


def test_results_cover_every_request(server):
    requests = photo_requests(load_prompt("dense_description"), n=8)
    results = Captioner(cfg_for(server)).run(requests)
    assert set(results) == {r.id for r in requests}
    for res in results.values():
        assert res.reason not in ("timeout",) and not res.reason.startswith("error")
        assert res.prompt_tokens > 64  # 64 image tokens for a 224 px image, plus the text
        assert res.completion_tokens > 0


def test_a_request_that_times_out_is_a_reject_with_its_reason(server):
    requests = photo_requests(load_prompt("dense_description"), n=2)
    results = Captioner(cfg_for(server, timeout_s=0.001)).run(requests)
    assert all(r.reason == "timeout" and not r.ok for r in results.values())


def test_server_killed_mid_run_then_rerun_completes_only_the_rest(server, tmp_path):
    cache = str(tmp_path / "cache")
    prompt = load_prompt("dense_description")
    requests = [r for k in range(4) for r in photo_requests(prompt)]  # ~80 requests with distinct ids
    for i, r in enumerate(requests):
        r.id = f"{r.id}-{i}"
        r.messages[-1]["content"][-1]["text"] += f" (variant {i})"
    cfg = cfg_for(server).model_copy(update={"sampling": SamplingConfig(max_tokens=48, temperature=0.8, seed=1)})

    import threading

    def killer():
        while len(list(Path(cache).glob("part-*.parquet"))) < 3:
            time.sleep(0.05)
        server.kill()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    first = Captioner(cfg, cache_url=cache, flush_every=2)
    with pytest.raises(EngineUnavailable, match="stopped answering"):
        first.run(requests)
    t.join(timeout=60)
    done = Captioner(cfg, cache_url=cache).cache
    assert 4 <= len(done) < len(requests)

    server.start()
    second = Captioner(cfg, cache_url=cache)
    results = second.run(requests)
    assert set(results) == {r.id for r in requests}
    assert second.stats["generated"] == len(requests) - len(done)
