"""The tiny random-weight models load and generate in the real engines (transformers and vLLM).

What must hold: the folders `build_all` writes are labelled as random weights; the tokenizer
renders chats the way Qwen2-VL's does; transformers and vLLM both load the VLM and the text model
from the local folders and generate; a real photo reaches the VLM (its image tokens are in the
prompt, and vLLM and transformers read it the same way).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.vllm_harness import vllm_cpu_engine
from weaverdata.models import tiny
from weaverdata.models.tiny import (
    IMAGE_MAX_PIXELS,
    RANDOM_WEIGHTS_NOTE,
    SPECIAL_TOKENS,
    build_all,
    build_tokenizer,
    read_marker,
)

# A 512x512 photo resized to at most 224x224 pixels: (224 / 14) ** 2 patches, merged 2x2.
IMAGE_TOKENS_224 = (224 // 14) ** 2 // 4
VISION_MARKERS = 2  # <|vision_start|> and <|vision_end|> around the image pads


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    import skimage

    return Image.fromarray(skimage.data.astronaut()).convert("RGB")


def image_chat(question: str = "Describe the image.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- tokenizer and chat template ---------------------------------------------------------------


def test_tokenizer_has_a_small_vocab_with_atomic_special_tokens():
    tok = build_tokenizer(extra_special_tokens=["<|proxy|>"])
    assert 2000 <= len(tok) <= 4000
    for special in [*SPECIAL_TOKENS, "<|proxy|>"]:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "A tabby cat sleeps on the red rug, near 3 books; ¿qué? 猫"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level: lossless
    assert len(tok.tokenize("The quick brown fox jumps over the lazy dog.")) <= 12  # real merges


def test_tokenizer_training_is_deterministic(tmp_path):
    build_tokenizer(tmp_path / "a")
    tiny._trained_tokenizer_json.cache_clear()  # train again, not from the per-process cache
    build_tokenizer(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_chat_template_renders_chatml_with_qwen2_vl_image_parts():
    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And the rug?"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nAnd the rug?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n"  # no generation prompt unless asked
    url_part = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert "<|vision_start|><|image_pad|><|vision_end|>" in tok.apply_chat_template(url_part, tokenize=False)


# --- folders, labels, idempotence --------------------------------------------------------------


def test_every_folder_says_its_weights_are_random(tiny_models):
    """`tiny_models` (conftest) is what `build_all` returned, plus the open_clip model."""
    for kind in ("vlm", "llm"):
        folder = tiny_models[kind]
        marker = json.loads((folder / "weaverdata_tiny.json").read_text())
        assert marker["random_weights"] is True
        assert marker["kind"] == kind and marker["seed"] == 0
        assert marker["note"] == RANDOM_WEIGHTS_NOTE
        assert marker["architecture"] == json.loads((folder / "config.json").read_text())["architectures"][0]
        assert RANDOM_WEIGHTS_NOTE in (folder / "README.md").read_text()
        assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    top = (tiny_models["vlm"].parent / "README.md").read_text()
    assert "RANDOM weights" in top and "gibberish" in top and "`vlm/`" in top and "`llm/`" in top


def test_build_all_is_idempotent_and_deterministic(tiny_models, tmp_path):
    out = tiny_models["vlm"].parent
    weights = {k: tiny_models[k] / "model.safetensors" for k in ("vlm", "llm")}
    before = {k: (w.stat().st_mtime_ns, sha256(w)) for k, w in weights.items()}
    started = time.monotonic()
    assert build_all(out) == {"vlm": tiny_models["vlm"], "llm": tiny_models["llm"]}
    assert time.monotonic() - started < 1.0  # nothing rebuilt
    assert {k: (w.stat().st_mtime_ns, sha256(w)) for k, w in weights.items()} == before
    # Same seed elsewhere: byte-identical weights; another seed: different weights.
    assert sha256(tiny.build_tiny_llm(tmp_path / "same", seed=0) / "model.safetensors") == before["llm"][1]
    assert sha256(tiny.build_tiny_llm(tmp_path / "other", seed=1) / "model.safetensors") != before["llm"][1]
    assert read_marker(tmp_path / "other")["seed"] == 1
    # A folder built by another recipe (an older version of this module) is rebuilt.
    marker_path = tmp_path / "same" / "weaverdata_tiny.json"
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "recipe": "stale"}))
    tiny.build_tiny_llm(tmp_path / "same", seed=0)
    assert read_marker(tmp_path / "same")["recipe"] == marker["recipe"]


# --- transformers ------------------------------------------------------------------------------


def test_transformers_vlm_generates_on_a_real_photo(tiny_models, photo):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"]).eval()
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    assert processor.image_processor.size["longest_edge"] == IMAGE_MAX_PIXELS

    prompt = processor.apply_chat_template(image_chat(), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[photo], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == IMAGE_TOKENS_224 > 0
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]

    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


def test_transformers_llm_generates_from_a_chat(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llm"]).eval()
    assert isinstance(model, Qwen2ForCausalLM)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "Describe a cat."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


# --- vLLM (real engine on CPU, in-process; one engine per model for the module) ---------------


@pytest.fixture(scope="module")
def vlm_engine(tiny_models):
    with vllm_cpu_engine(tiny_models["vlm"], max_model_len=512) as llm:
        yield llm


@pytest.fixture(scope="module")
def llm_engine(tiny_models):
    with vllm_cpu_engine(tiny_models["llm"], max_model_len=512) as llm:
        yield llm


def greedy(max_tokens: int = 8):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def test_vllm_vlm_chat_with_a_photo_counts_its_image_tokens(vlm_engine, photo):
    question = "Describe the image."
    with_image = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(photo)}},
        {"type": "text", "text": question},
    ]}]
    without_image = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    out_image = vlm_engine.chat(with_image, greedy())[0]
    out_text = vlm_engine.chat(without_image, greedy())[0]
    assert out_image.outputs[0].text and out_text.outputs[0].text
    extra = len(out_image.prompt_token_ids) - len(out_text.prompt_token_ids)
    assert extra == IMAGE_TOKENS_224 + VISION_MARKERS


def test_vllm_vlm_reads_the_photo_as_transformers_does(vlm_engine, tiny_models, photo):
    """Same prompt ids and, in float32, the same first greedy tokens in both engines."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    prompt = processor.apply_chat_template(image_chat(), add_generation_prompt=True, tokenize=False)
    out = vlm_engine.generate({"prompt": prompt, "multi_modal_data": {"image": photo}}, greedy())[0]

    inputs = processor(text=[prompt], images=[photo], return_tensors="pt")
    assert list(out.prompt_token_ids) == inputs["input_ids"][0].tolist()
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"]).eval()
    hf = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    assert list(out.outputs[0].token_ids)[:4] == hf[:4]


def test_vllm_llm_generates(llm_engine):
    prompts = ["<|im_start|>user\nDescribe a cat.<|im_end|>\n<|im_start|>assistant\n", "The red kite flies"]
    outs = llm_engine.generate(prompts, greedy(16))
    assert [len(o.outputs[0].token_ids) > 0 for o in outs] == [True, True]
    assert all(isinstance(o.outputs[0].text, str) for o in outs)


def test_vllm_vlm_in_vllms_default_multiprocess_mode(tiny_models, photo):
    """vLLM's own process layout (engine core and worker processes): 25-50 s to start."""
    import os

    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    with vllm_cpu_engine(tiny_models["vlm"], in_process=False, max_model_len=512) as llm:
        prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": photo}}, greedy())[0]
    assert out.outputs[0].token_ids
    image_token_id = json.loads((tiny_models["vlm"] / "config.json").read_text())["image_token_id"]
    assert list(out.prompt_token_ids).count(image_token_id) == IMAGE_TOKENS_224
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == before  # the environment is put back


def test_the_vllm_cpu_environment_has_one_definition():
    """The KV-cache size and thread binding of a CPU engine are set in one place
    (`vllm_backend.VLLM_CPU_ENV`); the tests' harness starts its engines with the same values."""
    from tests.vllm_harness import vllm_cpu_env
    from weaverdata.engines.vllm_backend import VLLM_CPU_ENV

    root = Path(__file__).resolve().parents[1]
    needle = '"VLLM_CPU_' + 'KVCACHE_SPACE":'  # split, so this file is not one of its own hits
    setters = sorted(
        str(p.relative_to(root))
        for folder in ("weaverdata", "tests", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if needle in p.read_text()
    )
    assert setters == ["weaverdata/engines/vllm_backend.py"]
    for in_process in (True, False):
        env = vllm_cpu_env(in_process=in_process)
        assert {k: env[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")} == {
            k: VLLM_CPU_ENV[k] for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")
        }
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == ("0" if in_process else "1")
