"""Trainer data feeding and planner encoding, as pure logic (no Ray): epoch splits, held-out
split, resumable streams, chat masks, packing, and packed attention that never leaks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from weaverdata.train.config import CurriculumStage
from weaverdata.train.data import DataPosition, SampleIndex, SampleStream, ShardFile, epoch_order, rank_slice, split_eval
from weaverdata.train.planner import IGNORE, Encoded, collate, encode_messages, pack
from weaverdata.train.visualizer import plan_stages


def make_index(sizes: list[int], kinds: list[str] | None = None) -> SampleIndex:
    shards = [ShardFile(f"g{i}", f"data/g{i}/part-{i:05d}.parquet", f"data/g{i}/part-{i:05d}.tar", n, "proxy_document") for i, n in enumerate(sizes)]
    shard = np.concatenate([np.full(n, i, dtype=np.int32) for i, n in enumerate(sizes)])
    row = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
    ids = [f"s{i}r{r}" for i, r in zip(shard, row)]
    return SampleIndex(shards, shard, row, ids, kinds or [""] * len(ids))


class FakeReader:
    """Returns the index's own ids (the stream logic, not the files, is under test here)."""

    def get(self, index, position):
        from weaverdata.train.data import Sample

        return Sample(index.ids[position], {"position": position}, {})


@pytest.mark.parametrize("sizes", [[7], [3, 5, 2], [10, 1, 1, 9, 4], [1]])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_sample_on_exactly_one_rank_per_epoch(sizes, world):
    index = make_index(sizes)
    for epoch in range(3):
        order = epoch_order(index, seed=5, epoch=epoch)
        parts = [rank_slice(order, r, world, 5, epoch, window=4) for r in range(world)]
        seen = Counter(int(p) for part in parts for p in part)
        assert seen == Counter(range(len(index)))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_epochs_are_shuffled_and_reproducible():
    index = make_index([20, 20, 20])
    a0 = rank_slice(epoch_order(index, 1, 0), 0, 1, 1, 0, 8)
    assert np.array_equal(a0, rank_slice(epoch_order(index, 1, 0), 0, 1, 1, 0, 8))
    assert not np.array_equal(a0, rank_slice(epoch_order(index, 1, 1), 0, 1, 1, 1, 8))
    assert not np.array_equal(a0, np.arange(60))
    # windows keep reads local: each window of 8 touches at most 2 shards
    for start in range(0, 60, 8):
        assert len({int(index.shard[p]) for p in a0[start : start + 8]}) <= 2


def test_stream_resumes_at_a_saved_position():
    index = make_index([6, 5, 4])
    full = SampleStream(index, FakeReader(), 0, 2, 3, 4)
    history = []
    for _ in range(3):
        history += [s.id for s in full]
        full.next_epoch()
    resumed_at = DataPosition(1, 2)
    stream = SampleStream(index, FakeReader(), 0, 2, 3, 4, resumed_at)
    tail = [s.id for s in stream]
    stream.next_epoch()
    tail += [s.id for s in stream]
    per_epoch = len(history) // 3
    assert tail == history[per_epoch + 2 :]


def test_held_out_split_is_stable_as_data_grows():
    small, big = make_index([50]), make_index([50, 400])
    tr_s, ev_s = split_eval(small, 0.1, 10_000)
    tr_b, ev_b = split_eval(big, 0.1, 10_000)
    assert set(ev_s.ids) == set(ev_b.ids) & set(small.ids)
    assert not set(tr_b.ids) & set(ev_b.ids) and len(tr_b) + len(ev_b) == len(big)
    assert 0.05 < len(ev_b) / len(big) < 0.15
    _, capped = split_eval(big, 0.1, 7)
    assert len(capped) == 7 and set(capped.ids) <= set(ev_b.ids)


def test_an_empty_curriculum_stage_hands_its_steps_to_the_next():
    stages = [CurriculumStage(tasks=["text_to_image"], fraction=0.3), CurriculumStage(tasks=["single_reference"], fraction=0.3), CurriculumStage(tasks=["multi_reference"], fraction=0.4)]
    assert plan_stages(stages, {"text_to_image": 5, "single_reference": 2, "multi_reference": 1}, 100) == [(["text_to_image"], 30), (["single_reference"], 60), (["multi_reference"], 100)]
    assert plan_stages(stages, {"text_to_image": 5, "multi_reference": 1}, 100) == [(["text_to_image"], 30), (["multi_reference"], 100)]
    assert plan_stages(stages, {"single_reference": 3}, 10) == [(["single_reference"], 10)]


# -- planner encoding (the tiny tokenizer built here, with its ChatML template) -----------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llm"])
    tok.add_tokens(["<imagine>", "</imagine>", "<BOI>"], special_tokens=True)
    return tok


MESSAGES = [
    {"role": "user", "content": "Show me a cat on a sofa <image:0>"},
    {"role": "assistant", "content": "Here it is. <imagine>a grey cat asleep on a red sofa</imagine><BOI>"},
]


def test_loss_only_on_assistant_text_and_tags_are_single_tokens(tokenizer):
    enc, cut = encode_messages(tokenizer, "a", MESSAGES, 512)
    assert not cut
    trained = tokenizer.decode([t for t, lab in zip(enc.ids, enc.labels) if lab != IGNORE])
    prompt = tokenizer.decode([t for t, lab in zip(enc.ids, enc.labels) if lab == IGNORE])
    assert trained.startswith("Here it is.") and trained.rstrip().endswith("<BOI><|im_end|>")
    assert "cat on a sofa" in prompt and "<|im_start|>assistant" in prompt and "Here" not in prompt
    boi = tokenizer.convert_tokens_to_ids("<BOI>")
    assert enc.ids.count(boi) == 1 and enc.labels.count(boi) == 1
    assert tokenizer.convert_tokens_to_ids("<imagine>") in enc.labels


def test_samples_without_target_tokens_are_skipped_with_a_reason(tokenizer):
    from weaverdata.train.planner import SampleSkipped

    with pytest.raises(SampleSkipped, match="no_assistant_turn"):
        encode_messages(tokenizer, "a", MESSAGES[:1], 512)
    with pytest.raises(SampleSkipped, match="no_target_tokens"):
        encode_messages(tokenizer, "a", MESSAGES, 8)  # cut before the answer starts


def test_packing_fills_sequences_in_order_and_leaves_the_overflow_for_the_next_batch():
    index = make_index([10])
    lengths = [5, 4, 3, 6, 2, 7, 1, 1, 8, 3]
    stream = SampleStream.in_index_order(index, FakeReader())

    def encode(sample):
        n = lengths[sample.record["position"]]
        return Encoded(sample.id, list(range(1, n + 1)), list(range(1, n + 1)))

    first = pack(stream, encode, batch_size=2, max_len=10, packing=True)
    assert [[len(e.ids) for e in seq] for seq in first] == [[5, 4], [3, 6]]
    second = pack(stream, encode, batch_size=2, max_len=10, packing=True)
    assert [[len(e.ids) for e in seq] for seq in second] == [[2, 7, 1], [1, 8]]
    assert [[len(e.ids) for e in seq] for seq in pack(stream, encode, 2, 10, True)] == [[3]]
    assert pack(stream, encode, 2, 10, True) is None
    ids, labels, pos = collate(second, pad_id=0)
    assert pos[0].tolist() == [0, 1, 0, 1, 2, 3, 4, 5, 6, 0]
    assert pos[1].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 0]  # padding restarts too
    assert labels[1, -1] == IGNORE and ids[1, -1] == 0  # the pad of row 1


def test_packed_samples_do_not_attend_to_each_other(tiny_models, tokenizer):
    """A sample's logits are the same alone and packed after another sample (block-diagonal mask)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llm"], dtype=torch.float32).eval()
    model.resize_token_embeddings(len(tokenizer))
    a, _ = encode_messages(tokenizer, "a", MESSAGES, 512)
    other = [{"role": "user", "content": "Tell me about the sea."}, {"role": "assistant", "content": "It is large and blue."}]
    b, _ = encode_messages(tokenizer, "b", other, 512)
    with torch.no_grad():
        ids, _, pos = collate([[a]], 0)
        alone = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        ids, _, pos = collate([[b, a]], 0)
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, len(b.ids) :]
        ids = torch.tensor([b.ids + a.ids])
        leaky = model(input_ids=ids, use_cache=False).logits[0, len(b.ids) :]  # one causal mask over both: a sees b
    assert torch.allclose(alone, packed, atol=1e-4)
    assert not torch.allclose(alone, leaky, atol=1e-3)
