"""The prompt budget: a request longer than the engine allows is shortened (if the recipe gave
shorter forms) or becomes a `caption_prompt_too_long` reject; it never ends the run.

The counts are checked against the tiny RANDOM-WEIGHT Qwen2-VL's own processor on a real photo;
the end-to-end test runs `weaverdata build-proxy` (documents) on real vLLM with documents whose
context is far beyond `engine.max_model_len`.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import cli_sets, run_cli, skimage_photo_files
from weaverdata.demo import proxy_overrides
from weaverdata.engines.budget import PROMPT_TOO_LONG, PromptCounter
from weaverdata.engines.vllm_backend import PrepareChat, prepared_image


def chat(text: str, n_images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": text}]}]


def photo_bytes(name: str = "astronaut") -> bytes:
    return next(p for p in skimage_photo_files() if p.stem == name).read_bytes()


def gibberish_words(n: int, length: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length)) for _ in range(n))


def test_the_count_is_what_the_processor_makes_of_the_prompt(tiny_models):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    counter = PromptCounter(processor)
    image = prepared_image(photo_bytes(), 224 * 224)
    for text in ("Describe the image.", gibberish_words(40, 9)):
        prompt = processor.apply_chat_template(chat(text), add_generation_prompt=True, tokenize=False)
        exact = len(processor(text=[prompt], images=[image])["input_ids"][0])
        assert counter.count(prompt, [image]) == exact
    text_only = processor.apply_chat_template(chat("Describe a cat.", 0), add_generation_prompt=True, tokenize=False)
    assert counter.count(text_only, []) == len(processor(text=[text_only])["input_ids"][0])


def prepare(model: Path, rows: list[dict], max_model_len: int, max_tokens: int) -> dict:
    stage = PrepareChat(str(model), None, 224 * 224, max_model_len=max_model_len, max_tokens=max_tokens)
    return stage({"key": [f"k{i}" for i in range(len(rows))], "forms": [json.dumps(r["forms"]) for r in rows], "images": [r["images"] for r in rows]})


def test_the_first_form_that_fits_is_sent_and_none_fitting_is_a_final_reject(tiny_models):
    long_text, short_text = gibberish_words(120, 9), "Describe the image."
    photo = photo_bytes()
    out = prepare(tiny_models["vlm"], [
        {"forms": [chat(short_text)], "images": [photo]},  # fits as it is
        {"forms": [chat(long_text), chat(gibberish_words(60, 9)), chat(short_text)], "images": [photo]},  # only its last form fits
        {"forms": [chat(long_text)], "images": [photo]},  # no shorter form
        {"forms": [chat(short_text)], "images": [b"not an image"]},
    ], max_model_len=512, max_tokens=256)
    assert out["prep_error"][0] == "" and short_text in out["prompt"][0]
    assert out["prep_error"][1] == "" and short_text in out["prompt"][1] and long_text[:50] not in out["prompt"][1]
    assert out["prep_error"][2].startswith(PROMPT_TOO_LONG + ":") and "budget 256" in out["prep_error"][2] and out["prompt"][2] == ""
    assert out["multimodal_data"][2] is None  # nothing of it goes to the engine
    assert out["prep_error"][3].startswith("image_unreadable:")


def long_context_documents(root: Path) -> Path:
    """Two OBELICS rows with a real photo each: one with a short context, one whose context words
    are long random strings (as crawled pages have: URLs, inline scripts), far over the budget."""
    img = root / "img"
    img.mkdir(parents=True)
    for name in ("astronaut", "coffee"):
        Image.open(next(p for p in skimage_photo_files() if p.stem == name)).convert("RGB").save(img / f"{name}.jpg", quality=90)
    rows = [
        {"texts": ["A photo of an astronaut standing in front of a flag, taken during a mission.", None, "The crew returned home safely weeks later."],
         "images": [None, "img/astronaut.jpg", None]},
        {"texts": [gibberish_words(400, 40, seed=1), None, gibberish_words(400, 40, seed=2)], "images": [None, "img/coffee.jpg", None]},
    ]
    (root / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.mark.ray
def test_build_proxy_rejects_prompts_over_the_budget_and_completes(tmp_path, tiny_models):
    inp = long_context_documents(tmp_path / "in")
    out = tmp_path / "out"
    sets = {**proxy_overrides(tiny_models, "documents"), "runtime.progress": False, "dedup": False, "documents.cut_samples": False,
            "documents.max_words": 100000, "documents.shorten_context": False, "documents.same_subject_cosine": 1.0}
    proc = run_cli("build-proxy", "--config", "pipelines/proxy-documents.yaml", "--input", str(inp), "--output", str(out), "--json", *cli_sets(sets), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "complete"
    rejects = [r for p in sorted(out.glob("rejects/*.parquet")) for r in pq.read_table(p).to_pylist() if r["source"].startswith("docs.jsonl")]
    assert [r["reason"] for r in rejects] == ["caption_prompt_too_long"] and rejects[0]["source"] != "docs.jsonl@0", rejects  # the second row
    assert "budget" in rejects[0]["detail"]
    kept = [row for p in sorted(out.glob("data/*/*.parquet")) for row in pq.read_table(p, columns=["source"]).to_pylist()]
    assert [r["source"] for r in kept] == ["docs.jsonl@0"]  # the first row, at byte 0
    assert summary["details"]["engine_starts"] == 1  # one engine for the job, whatever the rounds
    assert run_cli("validate", str(out)).returncode == 0
