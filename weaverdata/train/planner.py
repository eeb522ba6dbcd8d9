"""The planner trainer: causal-LM fine-tuning on textual-proxy documents.

- Each record's `messages` are rendered with the tokenizer's chat template; loss is taken only
  on assistant tokens (found by rendering the conversation prefix by prefix, so any template
  that renders prefixes consistently works, with no `{% generation %}` markers needed).
- The proxy tags (`<imagine>`, `</imagine>`, `<BOI>` by default) are added as special tokens and
  the embeddings resized, so each is one token the model learns to emit.
- Samples are packed into sequences of `max_seq_len` tokens; position ids restart at each sample
  and no attention mask is passed, so transformers builds a block-diagonal causal mask and a
  sample never attends to its neighbour.
- Metrics: token loss, and teacher-forced accuracy at the places where an image belongs: at
  every `<BOI>` target (`boi_accuracy`) and at every `<imagine>` target, the decision to open an
  image (`open_accuracy`), plus how often the model opens an image where the text goes on
  (`open_false_rate`).

Input images of a user turn stay as their `<image:SLOT>` text: this thin stage trains the text
side; a VLM planner would feed the images through its processor.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weaverdata.io.storage import Location
from weaverdata.train.config import PlannerTrainConfig
from weaverdata.train.contracts import Ranks, TrainError
from weaverdata.train.data import Sample, SampleIndex, SampleStream
from weaverdata.train.models import CLASS_REF, cache_dir, import_class

IGNORE = -100


class SampleSkipped(ValueError):
    """A record the planner cannot train on; its reason is counted."""


@dataclass
class Encoded:
    id: str
    ids: list[int]
    labels: list[int]


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, character spans of the assistant turns' trained text)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) if i else 0
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto):
            raise SampleSkipped("chat_template_not_prefix_stable")
        spans.append((start, len(upto)))
    if not spans:
        raise SampleSkipped("no_assistant_turn")
    return full, spans


def encode_messages(tokenizer, sample_id: str, messages: list[dict[str, str]], max_len: int) -> tuple[Encoded, bool]:
    """Token ids and labels (IGNORE outside assistant text); True when cut to `max_len`."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    k = 0
    for tok, (a, _b) in zip(ids, enc["offset_mapping"]):
        while k < len(spans) and a >= spans[k][1]:
            k += 1
        labels.append(tok if k < len(spans) and spans[k][0] <= a < spans[k][1] else IGNORE)
    truncated = len(ids) > max_len
    ids, labels = ids[:max_len], labels[:max_len]
    if labels:
        labels[0] = IGNORE  # never predicted from a neighbour in a packed sequence
    if all(x == IGNORE for x in labels):
        raise SampleSkipped("no_target_tokens_within_max_seq_len")
    return Encoded(sample_id, ids, labels), truncated


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def chat_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """A proxy document's messages, or an understanding chat's (messages; ShareGPT
    conversations; question + answer), as [{role, content}] with text content."""
    if "messages" in record:
        out = []
        for m in record["messages"]:
            content = m["content"]
            if isinstance(content, list):  # OpenAI-style parts: keep the text, mark images
                content = "".join(p.get("text", "") if p.get("type") == "text" else "<image>" for p in content)
            out.append({"role": m["role"], "content": content})
        return out
    if "conversations" in record:
        return [{"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]]
    if "question" in record and "answer" in record:
        return [{"role": "user", "content": record["question"]}, {"role": "assistant", "content": str(record["answer"])}]
    raise SampleSkipped("not_a_chat")


def pack(stream: SampleStream, encode, batch_size: int, max_len: int, packing: bool) -> list[list[Encoded]] | None:
    """Up to `batch_size` sequences of whole samples, each at most `max_len` tokens, greedily in
    stream order. A sample that does not fit is left in the stream for the next batch, so the
    batch depends only on the stream position (resume repeats it)."""
    seqs: list[list[Encoded]] = []
    cur: list[Encoded] = []
    used = 0
    while len(seqs) < batch_size:
        sample = stream.peek()
        if sample is None:
            break
        enc = encode(sample)
        if enc is None:
            stream.take()
            continue
        n = len(enc.ids)
        if cur and (not packing or used + n > max_len):
            seqs.append(cur)
            cur, used = [], 0
            continue
        cur.append(enc)
        used += n
        stream.take()
    if cur:
        seqs.append(cur)
    return seqs or None


def collate(seqs: list[list[Encoded]], pad_id: int):
    """input_ids, labels, position_ids (restarting at every sample, and for the padding)."""
    import torch

    width = max(sum(len(e.ids) for e in seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        at = 0
        for e in seq:
            n = len(e.ids)
            ids[r, at : at + n] = torch.tensor(e.ids)
            labels[r, at : at + n] = torch.tensor(e.labels)
            pos[r, at : at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
    return ids, labels, pos


class PlannerTask:
    name = "planner"
    schema = ("proxy_document", "mix")
    kind_column = None
    columns = ["id", "messages", "tags"]
    count_keys = ("boi_targets", "boi_hits", "open_targets", "open_hits", "open_false")

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.truncated = 0
        self._cache: dict[str, Encoded | None] = {}

    # -- model ---------------------------------------------------------------------------
    def setup(self, cfg: PlannerTrainConfig, out: Location, ranks: Ranks) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device = ranks.device
        ref = cfg.planner.model
        tokenizer_ref = cfg.planner.tokenizer
        if ref == "tiny":
            from weaverdata.models.tiny import build_tiny_llm

            ref = str(build_tiny_llm(cache_dir() / "tiny-models" / "llm"))
        if CLASS_REF.match(ref) and not Path(ref).exists():
            if not tokenizer_ref:
                raise TrainError(f"planner.model={ref} needs planner.tokenizer (a hub id or folder)")
            model = import_class(ref)(**cfg.planner.model_kwargs)
            self.hf = hasattr(model, "save_pretrained")
        else:
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32)
            self.hf = True
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref or ref)
        if not self.tokenizer.is_fast:
            raise TrainError("the planner needs a fast tokenizer (offset mappings find the assistant tokens)")
        if self.tokenizer.chat_template is None:
            raise TrainError(f"tokenizer of {tokenizer_ref or ref} has no chat template")
        self.tokenizer.add_tokens(list(cfg.planner.tags), special_tokens=True)
        self.tag_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in cfg.planner.tags]
        torch.manual_seed(cfg.optim.seed)  # the new embedding rows are drawn at random: same on every rank
        if not (hasattr(model, "get_input_embeddings") and hasattr(model, "resize_token_embeddings")):
            raise TrainError(f"planner model {cfg.planner.model} needs get_input_embeddings() and resize_token_embeddings(n) (the proxy tags are new tokens)")
        if model.get_input_embeddings().weight.shape[0] < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model = model.to(self.device)

    def trainable(self):
        return self.model

    def save_model(self, folder: str) -> None:
        import torch

        os.makedirs(folder, exist_ok=True)
        if self.hf:
            self.model.save_pretrained(folder)
        else:
            torch.save(self.model.state_dict(), os.path.join(folder, "weights.pt"))
        self.tokenizer.save_pretrained(folder)

    def load_model(self, folder: str) -> None:
        import torch
        from safetensors.torch import load_file

        model_dir = os.path.join(folder, "model")
        files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
        if files:
            state: dict[str, Any] = {}
            for f in files:
                state.update(load_file(f))
        else:
            state = torch.load(os.path.join(model_dir, "weights.pt"), map_location="cpu", weights_only=True)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(getattr(self.model, "config", None), "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise TrainError(f"checkpoint {model_dir} does not fit the model: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")

    def on_checkpoint(self, folder: str, step: int, eval_samples: list) -> None:
        pass

    # -- data ----------------------------------------------------------------------------
    def stages(self, train: SampleIndex, steps: int):
        return [("all", train, steps)]

    def encode(self, sample: Sample, cache: bool = True) -> Encoded | None:
        """The sample's tokens, or None (its skip reason counted). The cache (for a sample that
        did not fit a batch and is peeked again) belongs to the batch-building thread."""
        if cache and sample.id in self._cache:
            return self._cache[sample.id]
        try:
            messages = chat_messages(sample.record)
            enc, cut = encode_messages(self.tokenizer, sample.id, messages, self.cfg.planner.max_seq_len)
            self.truncated += cut
        except SampleSkipped as exc:
            self.skipped[str(exc)] = self.skipped.get(str(exc), 0) + 1
            enc = None
        except (KeyError, TypeError):
            self.skipped["malformed_messages"] = self.skipped.get("malformed_messages", 0) + 1
            enc = None
        if cache:
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[sample.id] = enc
        return enc

    def next_batch(self, stream: SampleStream):
        return pack(stream, self.encode, self.cfg.train.batch_size, self.cfg.planner.max_seq_len, self.cfg.planner.pack)

    def batch_ids(self, batch) -> list[str]:
        return [e.id for seq in batch for e in seq]

    # -- loss and metrics ------------------------------------------------------------------
    def _forward(self, batch):
        import torch.nn.functional as F

        ids, labels, pos = (t.to(self.device) for t in collate(batch, self.pad_id))
        extra = {"use_cache": False} if self.hf else {}  # with a cache, transformers ignores the packing
        out = self.model(input_ids=ids, position_ids=pos, **extra)
        logits = (out.logits if hasattr(out, "logits") else out)[:, :-1].float()
        target = labels[:, 1:]
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
        pred = logits.argmax(-1)
        valid = target != IGNORE
        open_id, _close_id, boi_id = self.tag_ids
        boi_t, open_t = target == boi_id, target == open_id
        counts = {
            "boi_targets": float(boi_t.sum()),
            "boi_hits": float(((pred == boi_id) & boi_t).sum()),
            "open_targets": float(open_t.sum()),
            "open_hits": float(((pred == open_id) & open_t).sum()),
            "open_false": float(((pred == open_id) & valid & ~open_t).sum()),
        }
        return loss_sum, float(valid.sum()), counts

    def loss(self, batch, step: int, ranks: Ranks):
        return self._forward(batch)

    def evaluate(self, samples: list[Sample], ranks: Ranks) -> dict[str, float]:
        import torch

        sums = {"loss_sum": 0.0, "tokens": 0.0, **dict.fromkeys(self.count_keys, 0.0)}
        encoded = [e for e in (self.encode(s, cache=False) for s in samples) if e is not None]
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(encoded), self.cfg.train.batch_size):
                loss_sum, tokens, counts = self._forward([[e] for e in encoded[i : i + self.cfg.train.batch_size]])
                sums["loss_sum"] += float(loss_sum)
                sums["tokens"] += tokens
                for k, v in counts.items():
                    sums[k] += v
        self.model.train()
        return sums

    @staticmethod
    def finish_eval(sums: dict[str, float]) -> dict[str, float]:
        out = {"loss": sums["loss_sum"] / sums["tokens"] if sums["tokens"] else float("nan"), "tokens": sums["tokens"], "boi_targets": sums["boi_targets"], "open_targets": sums["open_targets"]}
        if sums["boi_targets"]:
            out["boi_accuracy"] = sums["boi_hits"] / sums["boi_targets"]
        if sums["open_targets"]:
            out["open_accuracy"] = sums["open_hits"] / sums["open_targets"]
        non_open = sums["tokens"] - sums["open_targets"]
        if non_open:
            out["open_false_rate"] = sums["open_false"] / non_open
        return out

    def counters(self) -> dict[str, float]:
        return {"truncated": self.truncated, **{f"skipped_{k}": v for k, v in self.skipped.items()}}
