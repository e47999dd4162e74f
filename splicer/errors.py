"""User-facing errors.

Everything a user can get wrong (a spec, a model name, a cut point, a missing data set)
raises :class:`SplicerError`; the CLI prints its message without a traceback. Anything
else escaping is a bug in splicer and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SplicerError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


class SpecError(SplicerError):
    """A spec file that cannot be read or does not validate."""


class ModelSourceError(SplicerError):
    """A model reference (``cifar:NAME``, ``timm:NAME``, ...) that cannot be resolved."""


class CutError(SplicerError):
    """A block boundary that cannot be used to cut a model into blocks."""


class UnsupportedModelError(SplicerError):
    """A model whose structure splicer cannot splice (yet)."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid choices closest to a misspelt ``word``, best first.

    Case is ignored, and a choice equal to ``word`` but for case comes first (``KD`` -> ``kd``,
    not ``dkd``); then spelling neighbours, then choices containing ``word``.
    """
    choices = list(dict.fromkeys(choices))
    by_lower: dict[str, list[str]] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), []).append(choice)
    lowered = word.lower()
    found = list(by_lower.get(lowered, []))
    for match in difflib.get_close_matches(lowered, list(by_lower), n=n, cutoff=0.5):
        found += by_lower[match]
    found += [c for c in choices if lowered and lowered in c.lower()]
    return list(dict.fromkeys(found))[:n]


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ``"; did you mean 'a', 'b'?"`` suffix, or an empty string when nothing is close."""
    found = closest(word, choices, n)
    if not found:
        return ""
    return "; did you mean " + ", ".join(repr(c) for c in found) + "?"
