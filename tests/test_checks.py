"""Output checks on crafted engine outputs: each bad kind is rejected with its own reason."""

from __future__ import annotations

import pytest

from weaverdata.engines.checks import check_text, longest_char_loop, repetition_score

GOOD = (
    "A tabby cat curls on a faded red Persian rug beside a sunlit window, its striped fur glowing "
    "amber, soft morning light casting long shadows across worn wooden floorboards in a quiet room."
)


def test_a_good_caption_is_kept():
    assert check_text(GOOD, "stop").ok


@pytest.mark.parametrize(
    "text,finish,reason",
    [
        ("", "stop", "empty"),
        ("   \n\t ", "stop", "empty"),
        ("...", "stop", "empty"),
        (GOOD[:60], "length", "truncated"),
        ("the cat sat on the mat " * 12, "stop", "repetition"),
        ("A dog. " + "abcabcabcabc" * 20, "stop", "repetition"),
        ("I'm sorry, but I can't help with describing this image.", "stop", "refusal"),
        ("As an AI language model, I cannot see images.", "stop", "refusal"),
        ("I cannot view the image you provided, please try again later.", "stop", "refusal"),
    ],
)
def test_bad_outputs_are_rejected_with_their_reason(text, finish, reason):
    verdict = check_text(text, finish)
    assert not verdict.ok and verdict.reason == reason, verdict


def test_format_validator_reason():
    def needs_boi(text: str) -> str | None:
        return None if "<BOI>" in text else "no_boi"

    assert check_text(GOOD, "stop", validate_format=needs_boi).reason == "format:no_boi"
    assert check_text(GOOD + " <BOI>", "stop", validate_format=needs_boi).ok


def test_scores():
    assert repetition_score(GOOD) == 0.0
    assert repetition_score("a b c a b c a b c a b c") > 0.5
    assert longest_char_loop("xyzxyzxyz") == 9
    assert longest_char_loop("abcdefg") < 3
