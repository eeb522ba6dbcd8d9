"""Long-lived vLLM engines for a whole job: one start per replica, shared by every round and retry.

``ray.data.llm`` ties an engine's life to one dataset: each text round, and each retry round,
of a recipe was a new dataset and so a new engine start (30-100 s on CPU here, minutes for a 7B
model on a GPU). An :class:`EnginePool` starts ``engine.replicas`` engine actors once, when the
job first needs them, and keeps them until the job closes it. Ray Data pipelines reach them
through :class:`CallEngines`, a stage whose actors forward each prepared batch to an engine and
yield the outputs, so the data still streams through Ray Data (bounded in flight, on the
workers) while the engines stay up.

Each :class:`EngineActor` wraps vLLM's ``AsyncLLMEngine`` the way ``ray.data.llm`` does
(continuous batching, at most ``max_pending_requests`` admitted ahead of the running ones). A
request that vLLM refuses (a prompt longer than ``max_model_len``, a bad image) comes back as
an error row with vLLM's message, never as an exception that ends the run. A dead engine core
(``EngineDeadError``) makes the actor exit: Ray restarts it (``max_restarts=-1``) and retries
the batch it held (``max_task_retries=-1``), so no request is lost.

The pool counts engine starts (restarts included) and the time each engine had work, for
``summary.json`` (``engine_starts``, ``engine_busy_fraction``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("key", "text", "finish_reason", "prompt_tokens", "completion_tokens", "image_tokens", "error", "final")
"""One output row per request; ``error`` is ``"<reason>:<detail>"`` or empty, ``final`` says the
failure is the request's own (vLLM refused it), so it is a reject rather than something to retry."""


def actor_options(*, gpu: bool, cpus: float, tensor_parallel_size: int, env: dict[str, str] | None) -> dict[str, Any]:
    """Ray options of one engine actor (pure, so the GPU layout is testable on a CPU machine).

    >>> actor_options(gpu=False, cpus=1.0, tensor_parallel_size=1, env={"A": "1"})["num_cpus"]
    1.0
    >>> o = actor_options(gpu=True, cpus=1.0, tensor_parallel_size=1, env=None); (o["num_gpus"], o["num_cpus"])
    (1, 1.0)
    >>> actor_options(gpu=True, cpus=1.0, tensor_parallel_size=4, env=None)["num_gpus"]  # the workers take the GPUs
    0
    """
    opts: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 1000}
    if gpu and tensor_parallel_size == 1:
        opts.update(num_gpus=1, num_cpus=cpus)
    elif gpu:  # vLLM starts its tensor-parallel workers as Ray actors in the placement group
        opts.update(num_gpus=0, num_cpus=cpus)
    else:
        opts.update(num_cpus=cpus)
    if env:
        opts["runtime_env"] = {"env_vars": dict(env)}
    return opts


class EngineStats:
    """A tiny actor: engine starts (one call per engine construction, restarts included) and
    busy seconds, reported by the engine actors themselves so a restarted actor still counts."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.busy_seconds = 0.0
        self.requests = 0

    def started(self, info: dict[str, Any]) -> None:
        self.starts.append(info)

    def worked(self, busy_seconds: float, requests: int) -> None:
        self.busy_seconds += busy_seconds
        self.requests += requests

    def read(self) -> dict[str, Any]:
        return {"starts": list(self.starts), "busy_seconds": self.busy_seconds, "requests": self.requests}


def image_token_id(model: str, revision: str | None = None) -> int | None:
    """The id of the image placeholder token the model's processor expands per image."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model, revision=revision)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None


def _image_token_of(engine: Any, engine_kwargs: dict[str, Any]) -> int | None:
    """The image placeholder token id of the engine's model (None for a text-only model)."""
    cfg = getattr(getattr(engine, "model_config", None), "hf_config", None)
    if cfg is None:
        return image_token_id(engine_kwargs["model"], engine_kwargs.get("revision"))
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None


class EngineActor:
    """One vLLM engine (``AsyncLLMEngine``) in a Ray actor; ``generate`` takes prepared rows."""

    def __init__(self, engine_kwargs: dict[str, Any], max_pending: int, image_token: int | None, stats: Any = None):
        import vllm

        t0 = time.monotonic()
        self.engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**engine_kwargs))
        self.image_token = image_token if image_token is not None else _image_token_of(self.engine, engine_kwargs)
        self.max_pending = max(1, max_pending)
        self._sem: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._busy_since: float | None = None
        self._busy = 0.0
        self._reported = 0.0
        self._prefix = uuid.uuid4().hex[:8]
        self._n = 0
        self.stats = stats
        self.start_seconds = time.monotonic() - t0
        if stats is not None:
            stats.started.remote({"pid": os.getpid(), "start_seconds": round(self.start_seconds, 3), "at": time.time()})

    async def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "start_seconds": self.start_seconds}

    def _enter(self) -> None:
        if self._in_flight == 0:
            self._busy_since = time.monotonic()
        self._in_flight += 1

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._busy_since is not None:
            self._busy += time.monotonic() - self._busy_since
            self._busy_since = None

    async def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output row per input row, in order (see :data:`OUTPUT_COLUMNS`)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_pending)
        outs = await asyncio.gather(*(self._one(r) for r in rows))
        if self.stats is not None:  # busy stretches closed since the last report (an open one is reported by the call that closes it)
            closed, self._reported = self._busy - self._reported, self._busy
            self.stats.worked.remote(closed, len(rows))
        return outs

    async def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams

        try:
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError:  # another vLLM layout: no dead-engine type to single out
            EngineDeadError = ()  # noqa: N806

        sampling = dict(row["sampling"])
        regex = row.get("regex") or ""
        if regex:  # a constrained generation ends when its pattern is complete: stop strings would cut it
            sampling["stop"] = []
        params = vllm.SamplingParams(**sampling, structured_outputs=StructuredOutputsParams(regex=regex) if regex else None)
        prompt: dict[str, Any] = {"prompt": row["prompt"]}
        if row.get("multimodal_data"):
            prompt["multi_modal_data"] = row["multimodal_data"]
        self._n += 1
        request_id = f"{self._prefix}-{self._n}"
        out = {"key": row["key"], "text": "", "finish_reason": "", "prompt_tokens": 0, "completion_tokens": 0, "image_tokens": -1, "error": "", "final": False}
        assert self._sem is not None
        async with self._sem:
            self._enter()
            try:
                final = None
                async for res in self.engine.generate(prompt, params, request_id):
                    if res.finished:
                        final = res
                if final is None:
                    out["error"] = "error:engine:the engine ended the request without a final output"
                    return out
            except EngineDeadError as exc:
                log.error("vLLM engine core died (%s): exiting the actor so Ray restarts it", exc)
                os._exit(1)
            except ValueError as exc:  # vLLM refused this request (too long, bad input): this row's result, final
                out["error"], out["final"] = f"engine_refused:{type(exc).__name__}: {exc}", True
                return out
            except Exception as exc:  # noqa: BLE001 - any other per-request failure is this row's result (retried by a rerun), not the run's end
                out["error"] = f"error:engine:{type(exc).__name__}: {exc}"
                return out
            finally:
                self._leave()
        ids = list(final.prompt_token_ids or [])
        completion = final.outputs[0]
        out.update(
            text=completion.text,
            finish_reason=completion.finish_reason or "",
            prompt_tokens=len(ids),
            completion_tokens=len(completion.token_ids),
            image_tokens=sum(1 for t in ids if t == self.image_token) if self.image_token is not None else -1,
        )
        return out

    def busy(self) -> dict[str, Any]:
        open_stretch = (time.monotonic() - self._busy_since) if self._busy_since is not None else 0.0
        return {"busy_seconds": self._busy + open_stretch, "in_flight": self._in_flight}

    def shutdown(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


class EnginePool:
    """``replicas`` engine actors for a job, started on first use, closed by :meth:`close`."""

    def __init__(self, engine_kwargs: dict[str, Any], *, replicas: int, gpu: bool, cpus_per_replica: float, tensor_parallel_size: int,
                 max_pending: int, image_token: int | None, env: dict[str, str] | None = None, start_timeout_s: float = 1800.0):
        self.engine_kwargs = engine_kwargs
        self.replicas = replicas
        self.options = actor_options(gpu=gpu, cpus=cpus_per_replica, tensor_parallel_size=tensor_parallel_size, env=env)
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu = gpu
        self.max_pending = max_pending
        self.image_token = image_token
        self.start_timeout_s = start_timeout_s
        self.actors: list[Any] = []
        self._stats: Any = None
        self._pgs: list[Any] = []
        self.started_at: float | None = None
        self.start_seconds = 0.0

    def start(self) -> list[Any]:
        """Start the engines (once) and wait until each answers; returns the actor handles."""
        if self.actors:
            return self.actors
        import ray

        t0 = time.monotonic()
        self._stats = ray.remote(num_cpus=0)(EngineStats).remote()
        remote = ray.remote(EngineActor)
        for _ in range(self.replicas):
            opts = dict(self.options)
            if self.gpu and self.tensor_parallel_size > 1:
                from ray.util.placement_group import placement_group
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                pg = placement_group([{"GPU": 1, "CPU": 1}] * self.tensor_parallel_size, strategy="STRICT_PACK")
                self._pgs.append(pg)
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
            self.actors.append(remote.options(**opts).remote(self.engine_kwargs, self.max_pending, self.image_token, self._stats))
        ready = [a.ready.remote() for a in self.actors]
        done, waiting = ray.wait(ready, num_returns=len(ready), timeout=self.start_timeout_s)
        if waiting:
            self.close()
            raise TimeoutError(f"{len(waiting)} of {self.replicas} vLLM engine(s) did not start within {self.start_timeout_s:.0f} s "
                               "(not enough CPUs/GPUs in the cluster for engine.cpus_per_replica / tensor_parallel_size?)")
        ray.get(done)  # raises the engine's own error when one failed to start
        self.started_at = time.monotonic()
        self.start_seconds = self.started_at - t0
        log.info("%d vLLM engine(s) up in %.1f s", self.replicas, self.start_seconds)
        return self.actors

    def report(self) -> dict[str, Any]:
        """engine_starts (restarts included), busy seconds and busy fraction since the start."""
        import ray

        if self._stats is None:
            return {"engine_starts": 0, "engine_busy_seconds": 0.0, "engine_busy_fraction": None, "engine_requests": 0}
        s = ray.get(self._stats.read.remote())
        alive = time.monotonic() - (self.started_at or time.monotonic())
        fraction = s["busy_seconds"] / (alive * self.replicas) if alive > 0 else None
        return {"engine_starts": len(s["starts"]), "engine_busy_seconds": round(s["busy_seconds"], 3),
                "engine_busy_fraction": round(min(1.0, fraction), 4) if fraction is not None else None,
                "engine_requests": s["requests"], "engine_start_seconds": round(self.start_seconds, 3)}

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.info("engine actor shutdown: %s", exc)
            ray.kill(a, no_restart=True)
        self.actors = []
        for pg in self._pgs:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(pg)
        self._pgs = []


class CallEngines:
    """Ray Data stage: forward each prepared batch (key, prompt, multimodal_data, regex) to an
    engine of the pool and yield the outputs. Several batches are in flight per stage actor
    (``max_concurrency``), spread over the engines in turn."""

    def __init__(self, actors: list[Any], sampling: dict[str, Any]):
        self.actors = list(actors)
        self.sampling = sampling
        self._turn = int.from_bytes(os.urandom(2), "big")

    async def __call__(self, batch: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        n = len(batch["key"])
        rows = [{"key": batch["key"][i], "prompt": batch["prompt"][i], "multimodal_data": batch["multimodal_data"][i],
                 "regex": batch["regex"][i] if "regex" in batch else "", "sampling": self.sampling} for i in range(n)]
        self._turn += 1
        actor = self.actors[self._turn % len(self.actors)]
        outs = await actor.generate.remote(rows)
        yield {c: [o[c] for o in outs] for c in OUTPUT_COLUMNS}
