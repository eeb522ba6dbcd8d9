"""Output checks: a generation is a good caption, or it is rejected with a reason.

Pure functions on (text, finish_reason, expected format). Nothing here knows an engine. A
failed check is retried once with another seed when the config allows, then becomes a reject
row; it is never stored as a good caption.

Reasons: `empty`, `truncated` (cut at the token limit), `repetition` (a looping generation),
`refusal` (the model declined), `format:<what>` (the text breaks the task's expected shape).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from weaverdata.verdict import Verdict  # noqa: F401  (re-exported: the output checks return it)

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) (?:sorry|unable|not able)\b",
    r"\bI can(?:no|')t (?:help|assist|describe|provide|do that|comply)",
    r"\bI (?:cannot|won't|will not) (?:help|assist|describe|provide|comply)",
    r"\bas an AI(?: language)? model\b",
    r"\bI'm not (?:comfortable|allowed)\b",
    r"\bcannot (?:view|see|access) (?:the |this )?image",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


def repetition_score(text: str, n: int = 3) -> float:
    """Share of word n-grams that are repeats of an earlier n-gram (0 = none repeated)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    repeats = sum(c - 1 for c in counts.values())
    return repeats / len(grams)


def longest_char_loop(text: str, max_period: int = 40) -> int:
    """Length covered by the longest run of one substring repeated back to back (e.g. 'abcabcabc' -> 9)."""
    best = 0
    for period in range(1, max_period + 1):
        run = 0
        for i in range(period, len(text)):
            if text[i] == text[i - period]:
                run += 1
                best = max(best, run + period)
            else:
                run = 0
    return best


def check_text(
    text: str,
    finish_reason: str | None,
    *,
    min_words: int = 1,
    max_repetition: float = 0.5,
    max_loop_chars: int = 120,
    validate_format: Callable[[str], str | None] | None = None,
) -> Verdict:
    """Keep, or drop with the first reason that applies (order: empty, truncated, repetition, refusal, format)."""
    stripped = text.strip()
    if not stripped or len(_WORD.findall(stripped)) < min_words:
        return Verdict.drop("empty", f"{len(stripped)} characters")
    if finish_reason == "length":
        return Verdict.drop("truncated", "generation stopped at the token limit")
    score = repetition_score(stripped)
    if score > max_repetition:
        return Verdict.drop("repetition", f"{score:.0%} of word 3-grams repeat")
    loop = longest_char_loop(stripped[-2000:])
    if loop > max_loop_chars:
        return Verdict.drop("repetition", f"a {loop}-character run repeats one substring")
    match = _REFUSAL.search(stripped[:400])
    if match:
        return Verdict.drop("refusal", match.group(0))
    if validate_format is not None:
        problem = validate_format(stripped)
        if problem:
            return Verdict.drop(f"format:{problem}")
    return Verdict.keep()
