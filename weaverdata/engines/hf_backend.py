"""The transformers backend: a local fallback for debugging on a laptop (batched `generate`).

Loads the model and its processor once; pads left; samples with the configured parameters and
seed. Slow next to vLLM, but needs nothing but transformers and torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from weaverdata.config import EngineConfig
from weaverdata.engines.requests import CaptionRequest, RawGeneration


class TransformersBackend:
    name = "transformers"

    def __init__(self, cfg: EngineConfig):
        import torch
        from transformers import AutoConfig, AutoProcessor, AutoTokenizer

        self.cfg = cfg
        self.torch = torch
        hf_cfg = AutoConfig.from_pretrained(cfg.model, revision=cfg.revision)
        self.is_vlm = hasattr(hf_cfg, "vision_config")
        self.image_token = next((getattr(hf_cfg, n) for n in ("image_token_id", "image_token_index") if isinstance(getattr(hf_cfg, n, None), int)), None)
        device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if self.is_vlm:
            from transformers import AutoModelForImageTextToText

            self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype)
            self.processor = AutoProcessor.from_pretrained(cfg.model, revision=cfg.revision)
            self.tokenizer = self.processor.tokenizer
        else:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
            self.processor = None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(device).eval()
        self.device = device

    def close(self) -> None:
        self.model = None

    def _batch(self, requests: list[CaptionRequest], keys: list[str], sampling: dict[str, Any]) -> list[RawGeneration]:
        from weaverdata.engines.vllm_backend import prepared_image

        templater = self.processor or self.tokenizer
        texts = [templater.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests]
        if self.processor is not None:
            images = [[prepared_image(b, self.cfg.max_pixels) for b in r.images] for r in requests]
            flat = [im for ims in images for im in ims]
            inputs = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
        else:
            inputs = self.tokenizer(texts, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        self.torch.manual_seed(sampling["seed"])
        do_sample = sampling["temperature"] > 0
        with self.torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=sampling["max_tokens"],
                do_sample=do_sample,
                temperature=sampling["temperature"] if do_sample else None,
                top_p=sampling["top_p"] if do_sample else None,
                repetition_penalty=sampling["repetition_penalty"],
                pad_token_id=self.tokenizer.pad_token_id,
                **({"stop_strings": list(sampling["stop"]), "tokenizer": self.tokenizer} if sampling.get("stop") else {}),
            )
        prompt_len = inputs["input_ids"].shape[1]
        results = []
        eos = self.tokenizer.eos_token_id
        for i, key in enumerate(keys):
            new = out[i, prompt_len:].tolist()
            ended = eos in new
            if ended:
                new = new[: new.index(eos)]
            elif sampling.get("stop") and self.tokenizer.pad_token_id in new:  # stopped on a stop string, then padded
                new = new[: new.index(self.tokenizer.pad_token_id)]
                ended = True
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for stop in sampling.get("stop") or ():
                if stop in text:
                    text, ended = text[: text.index(stop)], True
            ids = inputs["input_ids"][i]
            mask = inputs["attention_mask"][i].bool()
            results.append(
                RawGeneration(
                    key=key,
                    text=text,
                    finish_reason="stop" if ended else "length",
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(new),
                    image_tokens=int((ids[mask] == self.image_token).sum()) if self.image_token is not None else None,
                )
            )
        return results

    def generate(self, requests: list[CaptionRequest], keys: list[str], sampling: dict) -> Iterator[RawGeneration]:
        constrained = [r.id for r in requests if r.regex]
        if constrained:
            raise ValueError(f"the transformers backend cannot constrain outputs to a regex (requests {constrained[:3]}); use the vllm or openai backend, or turn off the recipe's constrained outputs")
        step = self.cfg.batch_size
        for start in range(0, len(requests), step):
            yield from self._batch(requests[start : start + step], keys[start : start + step], sampling)
