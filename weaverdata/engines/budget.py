"""The prompt budget: a request's tokens (text plus image tokens) against what the engine allows.

vLLM refuses a prompt longer than ``max_model_len`` and cuts a generation at ``max_model_len``;
a request is sent only when its prompt leaves ``max_tokens`` for the answer. A recipe may give
shorter forms of a request (less surrounding context); the first form that fits is sent, and a
request none of whose forms fit is a final reject, ``prompt_too_long``, never a crash.

Counting follows the model's own processor: the chat template's text through its tokenizer, and
each image's tokens from the processor's ``_get_num_multimodal_tokens`` (most VLM processors in
transformers have it), else from running the processor on the image.
"""

from __future__ import annotations

from typing import Any

PROMPT_TOO_LONG = "prompt_too_long"


def budget(max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens an engine can take and still write ``max_tokens``.

    >>> budget(1024, 128)
    896
    """
    return max(0, max_model_len - max_tokens)


def first_fit(counts: list[int], limit: int) -> int | None:
    """Index of the first form whose token count is within ``limit``; None if none is.

    >>> first_fit([1200, 700, 300], 800), first_fit([900], 800), first_fit([], 800)
    (1, None, None)
    """
    for k, n in enumerate(counts):
        if n <= limit:
            return k
    return None


class PromptCounter:
    """Token counts of rendered prompts with their images, for one model's processor."""

    def __init__(self, templater: Any):
        self.templater = templater
        self.tokenizer = getattr(templater, "tokenizer", templater)
        self.image_token = getattr(templater, "image_token", None)
        self._per_image = getattr(templater, "_get_num_multimodal_tokens", None)

    def image_tokens(self, sizes: list[tuple[int, int]], prompt: str, images: list[Any]) -> int:
        """Tokens the images expand to (height, width sizes, after downsizing)."""
        if not sizes:
            return 0
        if self._per_image is not None:
            data = self._per_image(image_sizes=[list(s) for s in sizes])
            counts = getattr(data, "num_image_tokens", None)
            if counts is None and isinstance(data, dict):
                counts = data.get("num_image_tokens")
            if counts is not None:
                return int(sum(counts))
        # no shortcut in this processor: run it (exact, costs one preprocessing of the images)
        ids = self.templater(text=[prompt], images=images)["input_ids"][0]
        return len(ids) - self.text_tokens(prompt) + self.placeholders(prompt, len(images))

    def placeholders(self, prompt: str, n_images: int) -> int:
        """Image placeholder tokens the template wrote (one per image unless the processor says)."""
        if self.image_token and isinstance(self.image_token, str):
            return prompt.count(self.image_token)
        return n_images

    def text_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def count(self, prompt: str, images: list[Any]) -> int:
        """Tokens of a rendered prompt with its (prepared, PIL) images, as the engine will see it."""
        sizes = [(im.height, im.width) for im in images]
        return self.text_tokens(prompt) - self.placeholders(prompt, len(images)) + self.image_tokens(sizes, prompt, images)
