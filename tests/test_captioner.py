"""The captioner's logic with a scripted backend (its replies are fixed in the test; the real
engines have their own tests): checks, retries with another seed, the cache, deduplication."""

from __future__ import annotations

from weaverdata.config import EngineConfig
from weaverdata.engines.captioner import Captioner
from weaverdata.engines.requests import CaptionRequest, RawGeneration

GOOD = "A red bicycle leans against a brick wall on a quiet street at dusk, its chrome handlebars catching the orange light."


class ScriptedBackend:
    """Answers from a script: reply(request, seed) -> (text, finish_reason) or an error string."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[tuple[str, int]] = []

    def close(self):
        pass

    def generate(self, requests, keys, sampling):
        for r, k in zip(requests, keys):
            self.calls.append((r.id, sampling["seed"]))
            out = self.reply(r, sampling["seed"])
            if isinstance(out, str):
                yield RawGeneration(key=k, error=out)
            else:
                text, finish, image_tokens = (*out, None)[:3]
                yield RawGeneration(key=k, text=text, finish_reason=finish, prompt_tokens=10, completion_tokens=len(text.split()), image_tokens=image_tokens)


def req(i: int, text: str = "describe", images: list[bytes] | None = None) -> CaptionRequest:
    images = images or []
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return CaptionRequest(id=f"r{i}", messages=[{"role": "user", "content": content}], images=images, prompt_sha256="p" * 64, task="dense_description")


CFG = EngineConfig(model="scripted-model", retries_on_failed_check=1)


def test_failed_check_is_retried_with_another_seed_then_kept_or_rejected():
    def reply(r, seed):
        if r.id == "r0":
            return ("", "stop") if seed == 0 else (GOOD, "stop")  # fixed by the retry
        if r.id == "r1":
            return ("I'm sorry, I can't help with that.", "stop")  # refuses every time
        return (GOOD, "stop")

    backend = ScriptedBackend(reply)
    out = Captioner(CFG, backend=backend).run([req(0, "a"), req(1, "b"), req(2, "c")])
    assert out["r0"].ok and out["r0"].attempts == 2 and out["r0"].seed != 0
    assert not out["r1"].ok and out["r1"].reason == "refusal" and out["r1"].attempts == 2
    assert out["r2"].ok and out["r2"].attempts == 1
    assert sorted(backend.calls) == sorted([("r0", 0), ("r1", 0), ("r2", 0), ("r0", 1009), ("r1", 1009)])


def test_cache_means_a_rerun_pays_nothing(tmp_path):
    backend = ScriptedBackend(lambda r, s: (GOOD, "stop"))
    first = Captioner(CFG, cache_url=str(tmp_path / "cache"), backend=backend).run([req(i, f"t{i}") for i in range(5)])
    assert len(backend.calls) == 5
    backend2 = ScriptedBackend(lambda r, s: ("never called", "stop"))
    again = Captioner(CFG, cache_url=str(tmp_path / "cache"), backend=backend2).run([req(i, f"t{i}") for i in range(7)])
    assert [c[0] for c in backend2.calls] == ["r5", "r6"]
    assert all(again[f"r{i}"].text == first[f"r{i}"].text for i in range(5))


def test_cache_key_covers_sampling_and_model(tmp_path):
    backend = ScriptedBackend(lambda r, s: (GOOD, "stop"))
    Captioner(CFG, cache_url=str(tmp_path / "c"), backend=backend).run([req(0)])
    other = CFG.model_copy(update={"sampling": CFG.sampling.model_copy(update={"temperature": 0.1})})
    Captioner(other, cache_url=str(tmp_path / "c"), backend=backend).run([req(0)])
    Captioner(CFG.model_copy(update={"model": "other"}), cache_url=str(tmp_path / "c"), backend=backend).run([req(0)])
    assert len(backend.calls) == 3


def test_identical_requests_are_generated_once():
    backend = ScriptedBackend(lambda r, s: (GOOD, "stop"))
    out = Captioner(CFG, backend=backend).run([req(0, "same"), req(1, "same")])
    assert len(backend.calls) == 1 and out["r0"].text == out["r1"].text and out["r1"].id == "r1"


def test_transient_errors_are_reported_but_not_cached(tmp_path):
    backend = ScriptedBackend(lambda r, s: "timeout:no answer within 1 s")
    out = Captioner(CFG, cache_url=str(tmp_path / "c"), backend=backend).run([req(0)])
    assert not out["r0"].ok and out["r0"].reason == "timeout"
    backend2 = ScriptedBackend(lambda r, s: (GOOD, "stop"))
    assert Captioner(CFG, cache_url=str(tmp_path / "c"), backend=backend2).run([req(0)])["r0"].ok


def test_an_image_that_never_reached_the_model_is_rejected():
    backend = ScriptedBackend(lambda r, s: (GOOD, "stop", 0))
    out = Captioner(CFG.model_copy(update={"retries_on_failed_check": 0}), backend=backend).run([req(0, images=[b"\xff\xd8\xff fake"])])
    assert out["r0"].reason == "image_not_seen"


def test_truncated_output_is_rejected():
    backend = ScriptedBackend(lambda r, s: (GOOD, "length"))
    out = Captioner(CFG, backend=backend).run([req(0)])
    assert out["r0"].reason == "truncated" and out["r0"].attempts == 2
