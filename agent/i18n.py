"""Japanese and English for everything a field worker reads (the tray, the windows,
``sekisho-agent``'s messages).

The catalogs are standard gettext ``.po`` files (``agent/locale/<lang>.po``), read
directly — no compile step, so a translator's edit is what runs. English is the msgid.
The language: a command-line override (``--lang``), else ``SEKISHO_LANG``, else the signed
policy's ``ui.language`` (IT's choice, from the service's status), else the OS
locale (``LC_ALL``, ``LC_MESSAGES``, ``LANG``; Windows' UI language), else Japanese — the
field's language.
"""

from __future__ import annotations

import ast
import gettext
import locale
import os
import sys
from functools import cache
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("ja", "en")


class CatalogError(ValueError):
    """A .po file that cannot be read."""


def parse_po(text: str) -> dict[str, str]:
    """``msgid`` → ``msgstr`` of a .po file (no plurals or contexts: Sekisho uses neither)."""
    entries: dict[str, str] = {}
    msgid: list[str] | None = None
    msgstr: list[str] | None = None
    current: list[str] | None = None

    def flush() -> None:
        if msgid is not None and msgstr is not None:
            key = "".join(msgid)
            if key:  # the header entry has an empty msgid
                entries[key] = "".join(msgstr)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("msgid "):
                flush()
                msgid, msgstr = [ast.literal_eval(line[6:])], None
                current = msgid
            elif line.startswith("msgstr "):
                msgstr = [ast.literal_eval(line[7:])]
                current = msgstr
            elif line.startswith('"') and current is not None:
                current.append(ast.literal_eval(line))
            else:
                raise CatalogError(f"line {number}: {line[:40]!r} is not msgid, msgstr or a string")
        except (SyntaxError, ValueError) as exc:
            raise CatalogError(f"line {number}: not a quoted string ({exc})") from None
    flush()
    return entries


class Catalog(gettext.NullTranslations):
    def __init__(self, entries: dict[str, str]) -> None:
        super().__init__()
        self.entries = entries

    def gettext(self, message: str) -> str:
        return self.entries.get(message) or message


@cache
def catalog(lang: str) -> gettext.NullTranslations:
    if lang == "en":
        return gettext.NullTranslations()
    path = LOCALE_DIR / f"{lang}.po"
    return Catalog(parse_po(path.read_text("utf-8")))


def choose_language(override: str | None = None, policy: str | None = None) -> str:
    """The override if given, else SEKISHO_LANG, else the policy's (IT's) choice, else the OS
    locale's language if Sekisho speaks it, else Japanese."""
    if override:
        lang = override.split("_")[0].split("-")[0].lower()
        if lang not in LANGUAGES:
            raise ValueError(f"language {override!r}: Sekisho speaks {', '.join(LANGUAGES)}")
        return lang
    if os.environ.get("SEKISHO_LANG"):  # set for the service's users by IT, or by the tests
        return choose_language(os.environ["SEKISHO_LANG"])
    if policy:
        return choose_language(policy)
    for name in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE"):
        value = os.environ.get(name, "")
        if value and value not in ("C", "POSIX", "C.UTF-8"):
            lang = value.split(":")[0].split("_")[0].split(".")[0].lower()
            return lang if lang in LANGUAGES else "ja"
    if sys.platform == "win32":  # pragma: no cover - Windows only
        import ctypes

        lang_id = ctypes.windll.kernel32.GetUserDefaultUILanguage()  # type: ignore[attr-defined]
        return "ja" if lang_id & 0x3FF == 0x11 else "en"
    with_locale = locale.getlocale()[0] or ""
    return "en" if with_locale.startswith("en") else "ja"


class Translator:
    """``_`` for one language: ``tr = Translator("ja"); tr("Lock")`` → 「ロック」."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._catalog = catalog(lang)

    def __call__(self, message: str, **values: object) -> str:
        text = self._catalog.gettext(message)
        return text.format(**values) if values else text


def N_(message: str) -> str:  # the gettext convention: mark for translation, translate later
    return message


def extract(paths: list[Path]) -> list[str]:
    """Every string the UI translates: literal first arguments of ``tr(…)``, ``self.tr(…)``
    and ``N_(…)`` calls, in order of appearance (what the catalogs must cover)."""
    found: dict[str, None] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("tr", "N_") and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found[node.args[0].value] = None
    return list(found)


UI_MODULES = ("window.py", "tray.py", "messages.py", "cli.py")


def missing(lang: str) -> list[str]:
    """The UI's strings that ``lang``'s catalog does not translate."""
    if lang == "en":
        return []
    entries = parse_po((LOCALE_DIR / f"{lang}.po").read_text("utf-8"))
    return [m for m in extract([Path(__file__).parent / name for name in UI_MODULES]) if not entries.get(m)]
