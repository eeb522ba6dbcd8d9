"""Tiny models with RANDOM weights, built on this machine, that the real engines load.

No model hub is reachable here, yet the pipelines must be run end to end through the real
engines (transformers and vLLM). This module builds, in a few seconds and without any download:

- a byte-level BPE tokenizer trained with `tokenizers` on a small built-in English corpus,
  wrapped in `PreTrainedTokenizerFast`, with a ChatML chat template and the Qwen2-VL vision
  special tokens (:func:`build_tokenizer`);
- a tiny Qwen2-VL vision-language model (:func:`build_tiny_vlm`), saved with its processor
  (`Qwen2VLProcessor`, images capped at 224x224 pixels, so one image costs 64 tokens);
- a tiny Qwen2 text model (:func:`build_tiny_llm`);
- both at once with a README (:func:`build_all`).

Their weights are random: what they write is gibberish. They exist so that tests and demos
exercise real loading, real chat templates, real image preprocessing and real generation. Every
folder carries a ``weaverdata_tiny.json`` and a ``README.md`` that say so.

Starting a vLLM engine on CPU for these folders (the environment, the engine arguments, an
in-process engine for tests) is the tests' business: ``tests/vllm_harness.py``. The pipelines'
own vLLM environment is :data:`weaverdata.engines.vllm_backend.VLLM_CPU_ENV`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUILD_VERSION",
    "CHAT_TEMPLATE",
    "IMAGE_MAX_PIXELS",
    "IMAGE_MIN_PIXELS",
    "LLM_ARCHITECTURE",
    "MARKER_FILE",
    "RANDOM_WEIGHTS_NOTE",
    "SPECIAL_TOKENS",
    "VLM_ARCHITECTURE",
    "build_all",
    "build_tiny_llm",
    "build_tiny_vlm",
    "build_tokenizer",
    "read_marker",
    "tiny_corpus",
]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS - for tests and demos only; its text is gibberish"
"""The label every tiny model folder carries (in ``weaverdata_tiny.json`` and ``README.md``)."""

MARKER_FILE = "weaverdata_tiny.json"
"""Name of the label file written in each model folder."""

BUILD_VERSION = 1
"""Recipe version, part of the fingerprint in each label; a folder whose label carries another
fingerprint is rebuilt by the builders."""

# --- tokens -----------------------------------------------------------------------------------

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
)
"""Special tokens of every tiny tokenizer, in id order (ids 0..6): ChatML plus Qwen2-VL vision."""

TOKENIZER_VOCAB_SIZE = 3000
"""Target vocabulary of the BPE trainer (special tokens and the 256 byte symbols included)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)
"""ChatML, with content parts rendered as Qwen2-VL does (an image becomes
``<|vision_start|><|image_pad|><|vision_end|>``; the processor then repeats the pad once per image
token). Unlike Qwen2-VL's own template it adds no default system message."""

# --- vision preprocessing ---------------------------------------------------------------------

PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
IMAGE_MIN_PIXELS = 56 * 56
"""Smallest image area after resizing (4 image tokens)."""
IMAGE_MAX_PIXELS = 224 * 224
"""Largest image area after resizing: a 224x224 image (or any larger square) costs
(224 / 14 / 2) ** 2 = 64 image tokens."""

# --- corpus -----------------------------------------------------------------------------------

_PEOPLE = (
    "woman man child girl boy baker farmer painter teacher doctor nurse pilot sailor student "
    "musician dancer runner climber fisherman gardener chef driver writer singer astronaut "
    "scientist carpenter soldier monk tourist grandmother grandfather family crowd couple"
).split()
_ANIMALS = (
    "cat dog horse cow sheep goat bird eagle owl duck swan fox wolf bear deer rabbit squirrel "
    "mouse lion tiger elephant giraffe zebra monkey dolphin whale fish frog turtle snake bee "
    "butterfly spider parrot penguin camel donkey pig chicken"
).split()
_OBJECTS = (
    "table chair window door lamp book cup mug bottle plate bowl knife spoon fork clock phone "
    "camera bicycle car truck bus train boat plane kite ball guitar piano violin drum hat coat "
    "shoe bag umbrella basket box ladder rope bench fence bridge tower house barn tent flag "
    "mirror painting poster map letter candle vase flower tree leaf rock shell rocket helmet "
    "spacesuit coffee bread cake apple orange banana lemon tomato carrot cheese sandwich pizza"
).split()
_PLACES = (
    "kitchen garden street market park beach forest mountain river lake field desert village "
    "city harbor station airport museum library school church castle farm meadow valley island "
    "bakery studio office classroom hospital stadium playground rooftop balcony hallway cellar"
).split()
_COLORS = (
    "red blue green yellow orange purple pink brown black white gray golden silver dark pale "
    "bright"
).split()
_ADJECTIVES = (
    "small large tiny huge old young new ancient wooden metal plastic glass soft hard warm cold "
    "wet dry quiet noisy busy empty crowded sunny cloudy rainy snowy foggy calm wild happy "
    "sleepy curious friendly tall short round square narrow wide heavy light clean dirty shiny "
    "striped spotted fluffy smooth rough"
).split()
_VERBS = (
    "holds carries watches reads paints opens closes throws catches pushes pulls lifts drops "
    "cleans fixes builds climbs crosses follows finds picks eats drinks cooks bakes plays sings "
    "draws writes waves points touches hugs chases feeds rides drives sails flies"
).split()
_INTRANSITIVE = (
    "sleeps|sits|stands|walks|runs|jumps|swims|smiles|laughs|waits|rests|dances|looks away|"
    "leans forward|turns around|kneels"
).split("|")
_NATURE = (
    "sky cloud sun moon star rain snow wind storm thunder lightning rainbow sea wave sand stone "
    "grass moss branch root trunk bush hill cliff cave shore dune glacier volcano waterfall "
    "pond stream meadow jungle swamp horizon shadow reflection sunlight moonlight"
).split()
_BODY_AND_CLOTHES = (
    "face eyes hair hands arms legs feet shoulder smile beard glasses scarf gloves boots jacket "
    "shirt dress skirt trousers jeans sweater uniform necklace ring watch backpack apron"
).split()
_ACTIVITIES = (
    "cooking reading painting writing singing dancing running walking swimming climbing "
    "cycling fishing gardening shopping talking laughing waiting sleeping playing working "
    "building repairing studying drawing jumping skating skiing surfing sailing flying"
).split()
_MATERIALS = (
    "paper cotton wool leather silk velvet marble concrete brick steel copper bronze iron clay "
    "ceramic porcelain rubber bamboo straw linen denim"
).split()
_CAMERA = (
    "portrait landscape photograph snapshot screenshot diagram chart illustration sketch cartoon "
    "scene frame shot angle zoom focus blur exposure lighting contrast texture pattern outline "
    "silhouette composition perspective caption description summary reference subject object "
    "background foreground detail"
).split()
_PREPOSITIONS = (
    "near beside behind under above inside outside across along through between against"
).split()
_TIMES = (
    "in the morning|at noon|in the afternoon|in the evening|at night|at dawn|at sunset|"
    "in winter|in spring|in summer|in autumn|on a rainy day|after lunch|before dinner"
).split("|")
_CAPTION_OPENERS = (
    "A photo of|An image of|A picture showing|A close view of|A wide shot of|A painting of|"
    "A drawing of|A frame from a video of|A blurry photo of|A black and white photo of"
).split("|")
_FIXED = (
    "The quick brown fox jumps over the lazy dog.",
    "Describe the image in one sentence.",
    "What is shown in this picture?",
    "Write a short caption for the photo.",
    "The next frame shows the same scene from a different angle.",
    "The reference image shows the main subject before the change.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 64 100 128 256 512 1000 2024 2025.",
    "Punctuation: commas, periods. Questions? Answers! Quotes \"like this\" and 'that'; (brackets) [lists] {sets}.",
    "Assistant: Sure, here is a description of the image.",
    "User: Please describe what happens between the two frames.",
    "System: You are a helpful assistant.",
    "Step one, step two, step three; first, second, third and last.",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday.",
    "January February March April May June July August September October November December.",
    "north south east west left right top bottom center middle corner edge foreground background",
)


_TEMPLATES = (
    "{opener} a {adj} {color} {obj} {prep} the {obj2}.",
    "The {person} {verb} the {color} {obj} in the {place} {time}.",
    "A {adj} {animal} {still} {prep} the {obj}.",
    "In this picture, a {person} and a {animal} are in the {adj} {place}.",
    "Is there a {obj} {prep} the {animal}? Yes, it is {color} and {adj}.",
    "{time}, the {place} looks {adj} and {adj2}.",
    "The {animal} {verb} a {obj} while the {person} {still}.",
    "There are {count} {color} {obj}s on the {adj} {obj2}.",
    "The {person} in the {color} {wear} is {activity} under the {nature}.",
    "A {camera} of a {material} {obj} with a {adj} {camera2}.",
    "Two {animal}s are {activity} by the {nature} while {person}s watch.",
    "The {nature} behind the {place} turns {color} {time}.",
)
"""Sentence shapes of the corpus; each slot is drawn from the word list :data:`_SLOTS` names."""

_SLOTS: dict[str, tuple[str, ...]] = {
    "opener": tuple(_CAPTION_OPENERS),
    "person": tuple(_PEOPLE),
    "animal": tuple(_ANIMALS),
    "obj": tuple(_OBJECTS),
    "obj2": tuple(_OBJECTS),
    "place": tuple(_PLACES),
    "color": tuple(_COLORS),
    "adj": tuple(_ADJECTIVES),
    "adj2": tuple(_ADJECTIVES),
    "verb": tuple(_VERBS),
    "still": tuple(_INTRANSITIVE),
    "prep": tuple(_PREPOSITIONS),
    "time": tuple(_TIMES),
    "nature": tuple(_NATURE),
    "wear": tuple(_BODY_AND_CLOTHES),
    "activity": tuple(_ACTIVITIES),
    "material": tuple(_MATERIALS),
    "camera": tuple(_CAMERA),
    "camera2": tuple(_CAMERA),
    "count": tuple(str(n) for n in range(2, 13)),
}


def _fix_articles(sentence: str) -> str:
    """``a apple`` -> ``an apple``, and the first letter upper case."""
    sentence = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", sentence)
    return sentence[0].upper() + sentence[1:]


def tiny_corpus(n_sentences: int = 1000, seed: int = 0) -> list[str]:
    """A deterministic English corpus (captions, scenes, questions) built from word lists.

    The same ``n_sentences`` and ``seed`` give the same list on every machine and Python version
    (``random.Random`` with an integer seed is stable).
    """
    rng = random.Random(seed)
    sentences: list[str] = list(_FIXED)
    # Every word appears at least once in its plain and capitalised form, so the vocabulary does
    # not depend on which templates happened to be drawn.
    groups = (_PEOPLE, _ANIMALS, _OBJECTS, _PLACES, _COLORS, _ADJECTIVES, _VERBS, _NATURE,
              _BODY_AND_CLOTHES, _ACTIVITIES, _MATERIALS, _CAMERA)
    for group in groups:
        sentences.append(" ".join(group) + ".")
        sentences.append(" ".join(w.capitalize() for w in group) + ".")
    while len(sentences) < n_sentences:
        template = rng.choice(_TEMPLATES)
        words = {slot: rng.choice(choices) for slot, choices in _SLOTS.items()}
        sentences.append(_fix_articles(template.format(**words)))
    return sentences


# --- tokenizer --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(extra_special_tokens: tuple[str, ...]) -> str:
    """Train the BPE tokenizer once per process and set of extra specials; returns its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[*SPECIAL_TOKENS, *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Chat-shaped lines too, so role names and line breaks get their own merges.
    corpus = tiny_corpus()
    lines = [*corpus, *(f"user\n{s}\nassistant\n" for s in corpus[:50])]
    tok.train_from_iterator(lines, trainer=trainer)
    return tok.to_str()


def build_tokenizer(out_dir: str | Path | None = None, extra_special_tokens: Sequence[str] = ()) -> Any:
    """Train the tiny byte-level BPE tokenizer and return it as a `PreTrainedTokenizerFast`.

    The tokenizer has the ChatML specials (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``),
    the Qwen2-VL vision specials (``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``,
    ``<|video_pad|>``), any ``extra_special_tokens`` after them, and :data:`CHAT_TEMPLATE`.
    ``eos_token`` is ``<|im_end|>`` and ``pad_token`` ``<|endoftext|>``, as in Qwen2-VL-Instruct.
    Training is deterministic; when ``out_dir`` is given the tokenizer is saved there.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    extra = tuple(dict.fromkeys(t for t in extra_special_tokens if t not in SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(extra)),
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        extra_special_tokens=[*SPECIAL_TOKENS[1:], *extra],
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# --- models -----------------------------------------------------------------------------------

VLM_ARCHITECTURE = "Qwen2VLForConditionalGeneration"
LLM_ARCHITECTURE = "Qwen2ForCausalLM"

_TEXT_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 64: a size vLLM's CPU attention supports
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
}
_VISION_DIMS: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
    "mlp_ratio": 2,
    "patch_size": PATCH_SIZE,
    "spatial_merge_size": SPATIAL_MERGE_SIZE,
    "temporal_patch_size": TEMPORAL_PATCH_SIZE,
}


def read_marker(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``weaverdata_tiny.json`` label of a folder, or None when it has none."""
    path = Path(model_dir) / MARKER_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _recipe(kind: str) -> str:
    """Fingerprint of everything a build of ``kind`` depends on (corpus, template, dims), so a
    folder built by another version of this module is rebuilt rather than reused."""
    spec = {
        "build_version": BUILD_VERSION,
        "kind": kind,
        "corpus": tiny_corpus(),
        "chat_template": CHAT_TEMPLATE,
        "special_tokens": SPECIAL_TOKENS,
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "text": _TEXT_DIMS,
        "vision": _VISION_DIMS if kind == "vlm" else None,
        "pixels": [IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS] if kind == "vlm" else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _is_current(model_dir: Path, kind: str, seed: int) -> bool:
    marker = read_marker(model_dir)
    return (
        marker is not None
        and marker.get("kind") == kind
        and marker.get("seed") == seed
        and marker.get("recipe") == _recipe(kind)
        and (model_dir / "model.safetensors").is_file()
    )


def _folder_readme(kind: str, architecture: str, seed: int, dims: dict[str, Any]) -> str:
    lines = [
        f"# weaverdata tiny {kind.upper()} ({architecture})",
        "",
        f"**{RANDOM_WEIGHTS_NOTE}.**",
        "",
        "The weights were drawn at random (fixed seed) by `weaverdata.models.tiny`; the model was",
        "never trained. It exists so that tests and demos load and run a real model through",
        "transformers and vLLM on a machine without a model hub. Never use its outputs as data.",
        "",
        f"- architecture: `{architecture}`",
        f"- seed: {seed}",
        "- tokenizer: byte-level BPE trained locally on a small built-in English corpus, ChatML template",
    ]
    lines += [f"- {k}: {v}" for k, v in dims.items()]
    return "\n".join(lines) + "\n"


def _write_labels(model_dir: Path, kind: str, architecture: str, seed: int, dims: dict[str, Any]) -> None:
    marker = {
        "random_weights": True,
        "kind": kind,
        "architecture": architecture,
        "seed": seed,
        "note": RANDOM_WEIGHTS_NOTE,
        "build_version": BUILD_VERSION,
        "recipe": _recipe(kind),
        "built_by": "weaverdata.models.tiny",
        "dims": dims,
    }
    (model_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    (model_dir / "README.md").write_text(_folder_readme(kind, architecture, seed, dims))


def _generation_config(tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )


def _publish(tmp: Path, out_dir: Path, kind: str, seed: int, force: bool) -> Path:
    """Move a finished build into place; unless ``force``, a concurrent builder that finished
    first wins."""
    if not force and _is_current(out_dir, kind, seed):
        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _build(out_dir: str | Path, kind: str, seed: int, force: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write`` into a temporary sibling folder and rename it to ``out_dir``, unless
    ``out_dir`` already holds this build (same kind, seed and recipe) and not ``force``."""
    out = Path(out_dir)
    if not force and _is_current(out, kind, seed):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        # mkdtemp makes the folder private and some writers make private files; a model folder
        # is shared (Ray workers, other users), so make it readable like any checkout.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        return _publish(tmp, out, kind, seed, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_vlm(out_dir: str | Path, seed: int = 0, *, force: bool = False) -> Path:
    """Build a tiny Qwen2-VL with random weights in ``out_dir`` and return the folder.

    The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``, the
    tokenizer, the processor configuration (`Qwen2VLProcessor`; images resized to between
    :data:`IMAGE_MIN_PIXELS` and :data:`IMAGE_MAX_PIXELS`), ``weaverdata_tiny.json`` and
    ``README.md``. A folder already built with the same seed and recipe is kept as it is unless
    ``force``; a build goes to a temporary sibling folder first and is renamed into place.
    """

    def write(tmp: Path) -> None:
        import torch
        from transformers import (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLImageProcessor,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )

        tokenizer = build_tokenizer()
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        head_dim = _TEXT_DIMS["hidden_size"] // _TEXT_DIMS["num_attention_heads"]
        # M-RoPE splits each head's rotary frequency pairs (head_dim / 2 of them) into temporal,
        # height and width sections, 2:3:3 as in Qwen2-VL (16, 24, 24 for head_dim 128; 8, 12, 12
        # here). Sections adding up to head_dim instead load, then fail at the first forward.
        unit = head_dim // 32
        mrope_section = [unit * 4, unit * 6, unit * 6]
        text_config = {
            **_TEXT_DIMS,
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids[ENDOFTEXT],
        }
        vision_config = {**_VISION_DIMS, "hidden_size": _TEXT_DIMS["hidden_size"], "in_channels": 3}
        config = Qwen2VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_id=ids[IMAGE_PAD],
            video_token_id=ids[VIDEO_PAD],
            vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END],
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            model = Qwen2VLForConditionalGeneration(config).eval()
        model.generation_config = _generation_config(tokenizer)
        model.save_pretrained(str(tmp))
        image_processor = Qwen2VLImageProcessor(
            min_pixels=IMAGE_MIN_PIXELS,
            max_pixels=IMAGE_MAX_PIXELS,
            patch_size=PATCH_SIZE,
            merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
        )
        video_processor = Qwen2VLVideoProcessor(
            min_pixels=IMAGE_MIN_PIXELS,
            max_pixels=IMAGE_MAX_PIXELS,
            patch_size=PATCH_SIZE,
            merge_size=SPATIAL_MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
        )
        processor = Qwen2VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=CHAT_TEMPLATE,
        )
        processor.save_pretrained(str(tmp))
        dims = {"text": _TEXT_DIMS, "vision": _VISION_DIMS, "vocab_size": len(tokenizer),
                "image_max_pixels": IMAGE_MAX_PIXELS, "image_min_pixels": IMAGE_MIN_PIXELS}
        _write_labels(tmp, "vlm", VLM_ARCHITECTURE, seed, dims)

    return _build(out_dir, "vlm", seed, force, write)


def build_tiny_llm(out_dir: str | Path, seed: int = 0, *, force: bool = False) -> Path:
    """Build a tiny Qwen2 causal language model with random weights in ``out_dir``.

    Same tokenizer, chat template, labels and idempotence as :func:`build_tiny_vlm`.
    """

    def write(tmp: Path) -> None:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tokenizer = build_tokenizer()
        config = Qwen2Config(
            **_TEXT_DIMS,
            vocab_size=len(tokenizer),
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
            bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
            eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
            pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config).eval()
        model.generation_config = _generation_config(tokenizer)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _write_labels(tmp, "llm", LLM_ARCHITECTURE, seed, {"text": _TEXT_DIMS, "vocab_size": len(tokenizer)})

    return _build(out_dir, "llm", seed, force, write)


_TOP_README = """# Tiny models with RANDOM weights

**Every model in this folder has random weights. They were never trained; what they write is
gibberish. Use them for tests and demos only, never to produce data.**

They were built on this machine, without any download, by `weaverdata.models.tiny.build_all`
(seed {seed}, recipe version {version}), so that the pipelines can run end to end through the
real engines (transformers and vLLM) where no model hub is reachable.

| folder | what it is |
| --- | --- |
| `vlm/` | a tiny Qwen2-VL (`{vlm}`): 2 text layers of width 128, a 2-block vision encoder (patch 14, spatial merge 2), its `Qwen2VLProcessor` (images resized to at most 224x224 pixels = 64 image tokens) |
| `llm/` | a tiny Qwen2 text model (`{llm}`) of the same text size |

Other folders put here by other builders (the `weaverdata models tiny` command and the tests
add a tiny open_clip model in `clip/`) carry their own README and label.

How they were built: a byte-level BPE tokenizer (about {vocab} tokens) is trained with
`tokenizers` on a small English corpus generated from built-in word lists, wrapped in
`PreTrainedTokenizerFast` with a ChatML chat template and the Qwen2-VL vision special tokens;
each model is initialised from its config with `torch.manual_seed({seed})` and saved with
`save_pretrained` (safetensors). Each folder has a `weaverdata_tiny.json` label
(`"random_weights": true`) and its own README.

Rebuild with:

    python -c "from weaverdata.models.tiny import build_all; build_all('{out}')"
"""


def build_all(out_dir: str | Path, seed: int = 0, *, force: bool = False) -> dict[str, Path]:
    """Build the tiny VLM and LLM under ``out_dir`` (``vlm/``, ``llm/``) with a README.

    Idempotent: folders already built with this seed and recipe are kept. Returns
    ``{"vlm": path, "llm": path}``.
    """
    out = Path(out_dir)
    paths = {
        "vlm": build_tiny_vlm(out / "vlm", seed=seed, force=force),
        "llm": build_tiny_llm(out / "llm", seed=seed, force=force),
    }
    vocab = (read_marker(paths["llm"]) or {}).get("dims", {}).get("vocab_size", TOKENIZER_VOCAB_SIZE)
    readme = _TOP_README.format(
        seed=seed, version=BUILD_VERSION, vlm=VLM_ARCHITECTURE, llm=LLM_ARCHITECTURE, vocab=vocab, out=out
    )
    readme_path = out / "README.md"
    if not readme_path.is_file() or readme_path.read_text() != readme:
        readme_path.write_text(readme)
    return paths
