"""The narrative text files (`dwlib/text/<language>/`): every step of every scenario has its text in
every language, no text belongs to no step, and the placeholders resolve."""

from __future__ import annotations

import pytest

from dwlib import notebooks, text
from dwlib.report import NOT_RUN
from dwlib.scenarios import SCENARIOS
from dwlib.steps import STEPS
from dwlib.vocab import RunStatus, StepStatus, Unfinished


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


@pytest.mark.parametrize("language", text.LANGUAGES)
def test_every_step_of_every_scenario_has_its_text_and_no_text_is_an_orphan(language: str) -> None:
    needed = step_texts_needed(language)
    have = set(text.names(language, "steps"))
    # A step may have a text for when a scenario names it (map-defaults is in none by default).
    allowed = needed | set(STEPS) | {ref.id for sc in SCENARIOS.values() for ref in sc.steps}
    assert needed - have == set(), f"steps without text in {language}"
    assert have - allowed == set(), f"texts in {language} that belong to no step"
    assert set(text.names(language, "scenarios")) == set(SCENARIOS)
    for name in have:  # every placeholder resolves, in every scenario
        for sc in SCENARIOS.values():
            found = text.step(language, name)
            assert found.title and text.expand(found.body, language, parts=found.meta.get("parts"),
                                               facts={"finops": sc.finops, "dataverse": sc.dataverse})


def test_both_languages_have_the_same_files_and_parts() -> None:
    for folder in ("steps", "scenarios"):
        assert text.names("en", folder) == text.names("nl", folder)
    for name in text.names("en", "steps"):
        en, nl = text.step("en", name), text.step("nl", name)
        assert set(en.meta.get("parts", {})) == set(nl.meta.get("parts", {})), name
        assert ("learn" in en.meta) == ("learn" in nl.meta), name
    assert set(text.data("en", "pages")) <= set(text.data("nl", "pages"))
    for part in ("status", "words"):
        assert set(text.data("en", "labels")[part]) == set(text.data("nl", "labels")[part]), part


@pytest.mark.parametrize("language", text.LANGUAGES)
def test_every_status_has_its_word(language: str) -> None:
    words = {s: text.status_word(language, s) for s in {*StepStatus, *RunStatus, *Unfinished, NOT_RUN}}
    assert all(w.strip() for w in words.values()), words  # each one worded (a missing one raises)
    with pytest.raises(text.TextError, match=r"labels\.yaml"):
        text.status_word(language, "half_done")


def test_the_dutch_texts_use_the_dutch_ui_labels_and_dutch_learn_links() -> None:
    nl = notebooks.build("existing-existing", "nl")
    source = "\n".join(c.source for c in nl.cells if c.cell_type == "markdown")
    for label in ("Gegevensbeheer > Twee keer wegschrijven", "Model voor initiële synchronisatie",
                  "Rechtspersonen (cdm_companies)", "Wordt uitgevoerd", "Initiële synchronisatie"):
        assert label in source, label
    assert "learn.microsoft.com/nl-nl/" in source and "/en-us/dynamics365/fin-ops-core/dev-itpro/power" \
        not in source


def test_a_dutch_portal_instruction_keeps_the_english_one_for_the_consultant() -> None:
    english = {"title": "Run table maps Customers V3 (accounts)",
               "steps": ["In F&O open Data management > Dual-write (the table map list).", "Untranslatable."],
               "links": {"Dual-write": "https://x"}, "verify": "Customers V3 (accounts) Running"}
    dutch = text.instruction("nl", english)
    assert dutch["title"] == "Tabeltoewijzingen uitvoeren: Customers V3 (accounts)"
    assert dutch["steps"][0].startswith("Open in F&O Werkruimten > Gegevensbeheer > Twee keer wegschrijven")
    assert dutch["steps"][1] == "Untranslatable."  # no rule: stays English rather than guessed
    assert dutch["verify"] == "Customers V3 (accounts) Wordt uitgevoerd"
    assert dutch["links"] == {"Twee keer wegschrijven": "https://x"}
    assert dutch["en"] == {"title": english["title"], "steps": english["steps"]}
    assert text.instruction("en", english) == english
