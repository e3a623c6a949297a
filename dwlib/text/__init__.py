"""The runbooks' narrative in each language, from text files a translator edits (package data).

Layout (see README.md beside this file): `<language>/steps/<step id>.md` (one per step id, or per
registered step name when every use of the step says the same), `<language>/scenarios/<id>.md`,
`<language>/notebook.yaml` (the cells every notebook shares), `<language>/pages.yaml` (the titles of
the Microsoft Learn pages linked) and, but for English (the code's own), `<language>/gates.yaml`
(the portal instructions, sentence by sentence). A Markdown
file is front matter (YAML between `---` lines: `title`, optional `parts`, `learn`, …) and a body.
Lines of one paragraph are joined, so a translator may wrap them anywhere.

Placeholders in the texts: `{link:dw/PAGE}` (a dual-write page), `{link:pp/PAGE}` (Power Platform
integration), `{link:pa/PAGE}` (a Dataverse developer page) and `{link:nl-faq/PAGE}` /
`{link:en-dw/PAGE}` (a page whose text only the Dutch / English edition carries) become a Markdown
link in the file's language (`/en-us/`, `/nl-nl/`) whose text is the page's title;
`{part:NAME}` becomes the variant of `parts: NAME:` whose condition fits the scenario
(`finops=existing`, `dataverse=new`, … or `else`); `{NAME}` a value the caller gives.

Example:
    >>> step("en", "plan").title
    'Plan the initial sync'
    >>> learn_url("nl", "dw/lcs-setup")
    'https://learn.microsoft.com/nl-nl/dynamics365/fin-ops-core/dev-itpro/data-entities/dual-write/lcs-setup'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal, cast, get_args

import yaml

Language = Literal["en", "nl"]
LANGUAGES: tuple[Language, ...] = get_args(Language)
LOCALES: dict[str, str] = {"en": "en-us", "nl": "nl-nl"}

_ROOT = "https://learn.microsoft.com/{locale}/"
_FINOPS = "dynamics365/fin-ops-core/dev-itpro/"
# Where each kind of page key lives on Learn, and in which locale when not the file's own.
_KINDS: dict[str, tuple[str, str | None]] = {
    "dw": (_FINOPS + "data-entities/dual-write/", None),
    "pp": (_FINOPS + "power-platform/", None),
    "pa": ("power-apps/developer/data-platform/", None),  # Dataverse developer pages (plug-in tracing)
    "nl-faq": (_FINOPS + "data-entities/dual-write/", "nl-nl"),
    "en-dw": (_FINOPS + "data-entities/dual-write/", "en-us"),
}
_PLACEHOLDER = re.compile(r"\{(?:(link|part):)?([A-Za-z0-9_#./-]+)\}")
_BLOCK = re.compile(r"(#|>|-|\*|\d+\.)\s")


class TextError(KeyError):
    """A text is missing or names a placeholder nobody fills; the message says which file."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Text:
    """One text file: its title, body and front matter (`parts`, `learn`, …)."""

    language: Language
    name: str
    title: str
    body: str
    meta: Mapping[str, Any] = field(default_factory=dict)


def _language(language: str) -> Language:
    if language not in LANGUAGES:
        raise TextError(f"unknown language {language!r}: use one of {', '.join(LANGUAGES)}")
    return language


def _file(language: str, *parts: str) -> resources.abc.Traversable:
    return resources.files(__name__).joinpath(_language(language), *parts)


def available() -> list[Language]:
    """The languages whose texts are here (a folder with its `notebook.yaml`)."""
    return [lang for lang in LANGUAGES if resources.files(__name__).joinpath(lang, "notebook.yaml").is_file()]


def names(language: str, folder: str) -> list[str]:
    """The texts in `<language>/<folder>/` by name (file stem), sorted."""
    place = _file(language, folder)
    return sorted(p.name.removesuffix(".md") for p in place.iterdir() if p.name.endswith(".md"))


def unwrap(text: str) -> str:
    """Join the lines of each paragraph (a translator wraps freely); Markdown blocks keep their lines.

    >>> unwrap("one\\ntwo\\n\\n- a\\n- b")
    'one two\\n\\n- a\\n- b'
    """
    out = []
    for para in text.strip().split("\n\n"):
        lines = [line.strip() for line in para.strip().splitlines()]
        joined = lines[:1]
        for line in lines[1:]:
            if _BLOCK.match(line) and _BLOCK.match(joined[-1]):
                joined.append(line)
            else:
                joined[-1] += " " + line
        out.append("\n".join(joined))
    return "\n\n".join(out)


@cache
def _markdown(language: str, folder: str, name: str) -> Text:
    path = _file(language, folder, f"{name}.md")
    if not path.is_file():
        raise TextError(f"no text dwlib/text/{language}/{folder}/{name}.md: write it (see "
                        "dwlib/text/README.md)")
    raw = path.read_text(encoding="utf-8")
    _, front, body = raw.split("---\n", 2) if raw.startswith("---\n") else ("", "", raw)
    meta = yaml.safe_load(front) or {}
    return Text(_language(language), name, str(meta.pop("title", "")), unwrap(body), meta)


def step(language: str, name: str) -> Text:
    """The narrative of step `name` (a step id of a scenario, or a registered step's name)."""
    return _markdown(language, "steps", name)


def has_step(language: str, name: str) -> bool:
    """Whether `<language>/steps/<name>.md` exists."""
    return _file(language, "steps", f"{name}.md").is_file()


def step_for(language: str, step_id: str, step_name: str) -> Text:
    """The text of a scenario's step: its step id's own file where it has one, else its step's."""
    return step(language, step_id if has_step(language, step_id) else step_name)


def localize(url: str, language: str) -> str:
    """A Learn URL in `language`'s locale (`/nl-nl/`); other URLs as they are.

    >>> localize("https://learn.microsoft.com/en-us/dynamics365/x", "nl")
    'https://learn.microsoft.com/nl-nl/dynamics365/x'
    """
    return re.sub(r"^https://learn\.microsoft\.com/(?:[a-z]{2}-[a-z]{2}/)?",
                  f"https://learn.microsoft.com/{LOCALES[_language(language)]}/", url)


def scenario(language: str, scenario_id: str) -> Text:
    """The introduction of scenario `scenario_id` (`title`, `situation`; the body says what it does)."""
    return _markdown(language, "scenarios", scenario_id)


@cache
def data(language: str, name: str) -> Mapping[str, Any]:
    """A YAML file of `<language>/` (`notebook`, `pages`, `labels`, `gates`) as a mapping."""
    path = _file(language, f"{name}.yaml")
    if not path.is_file():
        raise TextError(f"no text dwlib/text/{language}/{name}.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def word(language: str, key: str, **values: Any) -> str:
    """A word of the rendered results, summaries and board in `language` (`labels.yaml`, `words:`),
    with `{name}` filled from `values`.

    >>> word("nl", "evidence_files"), word("nl", "more", n=3)
    ('Bewijsbestanden', '… nog 3 rijen in het uitvoeringsrecord')
    """
    words = data(language, "labels")["words"]
    if key not in words:
        raise TextError(f"no word {key!r} in dwlib/text/{language}/labels.yaml: add it under words:")
    return str(words[key]).format(**values)


def status_word(language: str, status: str) -> str:
    """A status (`dwlib.vocab`) as `language` names it (`labels.yaml`, `status:`).

    >>> status_word("nl", "already_done"), status_word("en", "already_done")
    ('al gedaan', 'already done')
    """
    statuses = data(language, "labels")["status"]
    key = status.replace(" ", "_")
    if key not in statuses:
        raise TextError(f"no status {key!r} in dwlib/text/{language}/labels.yaml: add it under status:")
    return str(statuses[key])


def learn_url(language: str, key: str) -> str:
    """The Learn URL of page `key` (`dw/…`, `pp/…`, `pa/…`, `nl-faq/…`, `en-dw/…`, optionally with
    `#anchor`)."""
    kind, _, page = key.partition("/")
    if kind not in _KINDS or not page:
        raise TextError(f"unknown Learn page {key!r}: write dw/PAGE, pp/PAGE, pa/PAGE, nl-faq/PAGE or "
                        "en-dw/PAGE")
    folder, locale = _KINDS[kind]
    return _ROOT.format(locale=locale or LOCALES[_language(language)]) + folder + page


def page_key(url: str) -> tuple[Language, str]:
    """The language of a Learn URL's page (by its locale; none is English) and its key (`dw/…`, `pp/…`,
    `pa/…`, with the URL's anchor).

    >>> page_key("https://learn.microsoft.com/dynamics365/fin-ops-core/dev-itpro/power-platform/x#y")
    ('en', 'pp/x#y')
    """
    found = re.match(r"https://learn\.microsoft\.com/(?:([a-z]{2})-[a-z]{2}/)?([^?]+)", url)
    if found:
        for kind in ("dw", "pp", "pa"):
            folder = _KINDS[kind][0]
            if found[2].startswith(folder):
                return _language(found[1] or "en"), f"{kind}/{found[2].removeprefix(folder)}"
    raise TextError(f"{url} is not a Learn page of the finance and operations or Dataverse documentation "
                    "the runbooks link (dw/, pp/, pa/)")


def title(url: str) -> str:
    """The title of the Learn page `url` links (its heading on Learn in the page's own language), from
    that language's `pages.yaml`.

    >>> title("https://learn.microsoft.com/nl-nl/dynamics365/fin-ops-core/dev-itpro/data-entities/"
    ...       "dual-write/connection-setup#new-new")
    'Richtlijnen voor het instellen van twee keer wegschrijven'
    """
    language, key = page_key(url)
    key = key.partition("#")[0]
    pages = data(language, "pages")
    if key not in pages:
        raise TextError(f"no title for {key} in dwlib/text/{language}/pages.yaml: add the page's title "
                        "(its heading on Learn)")
    return str(pages[key])


def link(language: str, key: str) -> str:
    """A Markdown link to page `key` in `language` whose text is the page's title."""
    url = learn_url(language, key)
    return f"[{title(url)}]({url})"


def _variant(variants: Mapping[str, str], facts: Mapping[str, str], where: str) -> str:
    for condition, text in variants.items():
        name, _, value = condition.partition("=")
        if condition == "else" or facts.get(name) == value:
            return str(text)
    raise TextError(f"{where}: no variant fits {dict(facts)}; add an `else:` variant")


def expand(text: str, language: str, *, parts: Mapping[str, Mapping[str, str]] | None = None,
           facts: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None,
           where: str = "text") -> str:
    """`text` with its placeholders filled (see the module docstring); an unknown one is an error.

    >>> expand("See {link:dw/lcs-setup} for {who}.", "nl", values={"who": "DAT"})[:45]
    'See [Instellingen voor twee keer wegschrijven'
    """
    parts, facts, values = parts or {}, facts or {}, values or {}

    def fill(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "link":
            return link(language, name)
        if kind == "part":
            if name not in parts:
                raise TextError(f"{where}: {{part:{name}}} has no `parts: {name}:` in its front matter")
            return expand(_variant(parts[name], facts, f"{where} part {name}"), language, parts=parts,
                          facts=facts, values=values, where=where)
        if name not in values:
            raise TextError(f"{where}: unknown placeholder {{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, text)


@cache
def _gate_rules(language: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    if language == "en" or not _file(language, "gates.yaml").is_file():
        return ()
    rules = cast(list[dict[str, str]], data(language, "gates"))  # a list of {en: pattern, <language>: text}
    return tuple((re.compile(rule["en"]), str(rule[language])) for rule in rules)


def gate_sentence(language: str, sentence: str) -> str | None:
    """`sentence` of an English portal instruction in `language` (`<language>/gates.yaml`); None when
    no rule covers it (English: the sentence itself).

    >>> gate_sentence("nl", "Stop table maps Customers V3 (accounts)")
    'Tabeltoewijzingen stoppen: Customers V3 (accounts)'
    """
    if language == "en":
        return sentence
    for pattern, template in _gate_rules(language):
        found = pattern.fullmatch(sentence)
        if found:
            return template.format(**found.groupdict())
    return None


def instruction(language: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A portal instruction (`title`, `steps`, `links`, `verify`) in `language`; a sentence without a
    rule stays English. Another language keeps the English `title` and `steps` under `en`: what a
    program acting on the instruction (the sandbox consultant) reads.

    >>> instruction("nl", {"title": "Select Save.", "steps": [], "links": {}, "verify": "x Running"})["title"]
    'Selecteer Save.'
    """
    if language == "en":
        return dict(payload)

    def say(sentence: str) -> str:
        return gate_sentence(language, sentence) or sentence

    return {"title": say(payload["title"]), "steps": [say(s) for s in payload["steps"]],
            "links": {say(k): v for k, v in payload["links"].items()}, "verify": say(payload["verify"]),
            "en": {"title": payload["title"], "steps": list(payload["steps"])}}
