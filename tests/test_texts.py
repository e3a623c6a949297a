"""The narrative text files (`dwlib/text/<language>/`): every step of every scenario has its text in
every language, no text belongs to no step, and the placeholders resolve."""

from __future__ import annotations

import pytest

from dwlib import notebooks, text
from dwlib.scenarios import SCENARIOS
from dwlib.steps import STEPS


def step_texts_needed(language: str) -> set[str]:
    return {notebooks.text_name(ref, language) for sc in SCENARIOS.values() for ref in sc.steps}


def test_the_english_titles_are_the_registered_steps_own() -> None:
    for sc in SCENARIOS.values():
        for ref in sc.steps:
            assert text.step("en", notebooks.text_name(ref)).title == STEPS[ref.step].title, ref.id


def test_a_missing_text_names_the_file_to_write() -> None:
    with pytest.raises(text.TextError, match=r"dwlib/text/en/steps/no-such-step.md"):
        text.step("en", "no-such-step")


def test_a_placeholder_nobody_fills_is_an_error() -> None:
    with pytest.raises(text.TextError, match=r"unknown placeholder \{nobody\}"):
        text.expand("a {nobody} b", "en")
    with pytest.raises(text.TextError, match=r"no `parts: where:`"):
        text.expand("{part:where}", "en")
