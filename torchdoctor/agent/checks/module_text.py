"""A module's source that answers the rules' `token in source` gates cheaply."""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_WORDS_ONLY = bytes(c if c in _WORD_BYTES or c >= 0x80 else 0x20 for c in range(256))
"""Every byte that is not a word character (ASCII letter, digit, `_`, or part of a non-ASCII
character) becomes a space."""
_WORD = re.compile(r"[A-Za-z0-9_]+")


class ModuleText(str):
    """A module's source that answers `token in text` and `lower()` once per module.

    Rules gate on a few hundred words (`"backward" in ctx.source`), most of them absent, and
    each miss was a scan of the whole file. A token made of word characters can only occur
    inside one of the source's words, so it is looked up in the module's distinct words
    (built once, a sixth of the text on torch's sources); a token with other characters
    is absent if one of its words is, and scanned for only when they all occur. Answers are
    exact and remembered.
    """

    _found: dict[str, bool]
    _lowered: ModuleText | None
    _vocabulary: bytes | None
    _distinct: frozenset[bytes] | None

    def __new__(cls, text: str) -> ModuleText:
        self = super().__new__(cls, text)
        self._found = {}
        self._lowered = None
        self._vocabulary = None
        self._distinct = None
        return self

    def __contains__(self, token: object, /) -> bool:
        try:
            found: bool | None = self._found.get(token)  # type: ignore[call-overload]
        except TypeError:  # unhashable: str's own TypeError
            return str.__contains__(self, token)  # type: ignore[operator]
        if found is not None:  # asked before: about half of the asks
            return found
        if not isinstance(token, str):
            return str.__contains__(self, token)  # type: ignore[operator]  # str's TypeError
        whole, whole_words, parts = _PLANS.get(token) or _plan(token)
        if whole is not None:  # one word: most gates (inlined: rules ask ~180 a module)
            found = whole in (self._vocabulary or self._words())
        else:
            found = self._search(token, whole_words, parts)
        self._found[token] = found
        return found

    def has_word(self, word: str) -> bool:
        """Whether `word` (word characters only) is one of the text's whole words."""
        return word.encode("ascii") in self._distinct_words()

    def _distinct_words(self) -> frozenset[bytes]:
        distinct = self._distinct
        if distinct is None:
            vocabulary = self._words()  # sets the index, unless `lower` gave the vocabulary
            distinct = self._distinct = self._distinct or frozenset(vocabulary.split())
        return distinct

    def lower(self) -> ModuleText:
        """The lower-cased text, itself a `ModuleText`: rules ask it a few dozen words per
        module (`"target" in ctx.source.lower()`), each a scan of the whole text otherwise.
        An ASCII text's lower-cased words are its words lower-cased, so their index comes
        from this one's; `str.lower` of other characters may give ASCII ones (the Kelvin
        sign gives `k`), so a text that is not ASCII builds its own."""
        if self._lowered is None:
            self._lowered = ModuleText(str.lower(self))
            if str.isascii(self):
                self._lowered._vocabulary = self._words().lower()
        return self._lowered

    def _search(self, token: str, whole_words: tuple[bytes, ...], parts: tuple[bytes, ...]) -> bool:
        """A token with other characters than word ones, given its words (`_plan`): those
        it bounds on both sides must be whole words of the text, the others occur in the
        vocabulary with a space where the token bounds them. Most tokens asked are absent
        though their words occur (`.to(` where `to` is only ever a comment's word): seven in
        ten are ruled out so, without scanning the text."""
        if not whole_words and not parts:
            return str.__contains__(self, token)
        if whole_words:
            distinct = self._distinct_words()
            for word in whole_words:
                if word not in distinct:
                    return False
        if parts:
            vocabulary = self._words()
            for part in parts:
                if part not in vocabulary:
                    return False
        return str.__contains__(self, token)

    def _words(self) -> bytes:
        """The source's distinct words, each between spaces (UTF-8 keeps ASCII bytes for
        ASCII characters only, so a word found here is a word of the text)."""
        if self._vocabulary is None:
            encoded = str.encode(self, "utf-8", "surrogatepass")
            self._distinct = frozenset(encoded.translate(_WORDS_ONLY).split())
            self._vocabulary = b" " + b" ".join(self._distinct) + b" "
        return self._vocabulary


_Plan = tuple[bytes | None, tuple[bytes, ...], tuple[bytes, ...]]
_PLANS: dict[str, _Plan] = {}
"""Per token (rules ask the same few hundred of every module): the token as bytes when it is
one word, else its words (`_plan`). Bounded: a long-lived server must not grow it without
end."""
_MAX_PLANS = 4096


def _plan(token: str) -> _Plan:
    """(the token when it is one word, the words it bounds on both sides, its other words).
    Where an ASCII token occurs, a word it bounds on a side is a whole word of the text on
    that side: the words it bounds on both sides are whole words (`.to(` -> `to`), and the
    others sit in the vocabulary (`ModuleText._words`) with a space on their bounded side
    (`train=False` -> `train `, ` False`). A token with other characters has its words."""
    if token.isascii() and token.replace("_", "a").isalnum():
        plan: _Plan = (token.encode("ascii"), (), ())
    elif token.isascii():
        whole_words: list[bytes] = []
        parts: list[bytes] = []
        for found in _WORD.finditer(token):
            word = found.group().encode("ascii")
            before, after = found.start() > 0, found.end() < len(token)
            if before and after:
                whole_words.append(word)
            else:
                parts.append(b" " + word if before else word + b" ")
        plan = (None, tuple(whole_words), tuple(parts))
    else:
        plan = (None, (), tuple(word.encode("ascii") for word in _WORD.findall(token)))
    if len(_PLANS) < _MAX_PLANS:
        _PLANS[token] = plan
    return plan


def may_name(source: str, identifier: str) -> bool:
    """Whether the identifier `identifier` (ASCII) may occur in a module's code: in an ASCII
    text, only as one of its whole words (`eval` is not in `evaluate`); a non-ASCII text may
    spell it in characters the parser normalises (NFKC), and there the answer stays whether
    the text holds it at all."""
    if not source.isascii():
        return identifier in source
    if isinstance(source, ModuleText):
        return source.has_word(identifier)
    return re.search(rf"\b{identifier}\b", source) is not None


@dataclass(frozen=True)
class Triggers:
    """Text without which a rule can do nothing in a module (`Rule.triggers`), or without
    which an analysis can find nothing: found when the text holds one of `words`, or one of
    each group of `all_of` (a training loop needs `backward` and a step), or one of `lowered`
    in any case. A text that is not ASCII always triggers `for_identifiers` vocabularies: it
    may spell an identifier in characters the parser normalises (NFKC)."""

    words: tuple[str, ...] = ()
    lowered: tuple[str, ...] = ()
    for_identifiers: bool = False
    all_of: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.lowered or self.all_of)

    def found_in(self, source: str) -> bool:
        if any(word in source for word in self.words):
            return True
        if self.all_of and all(any(word in source for word in group) for group in self.all_of):
            return True
        if self.for_identifiers and not source.isascii():
            return True
        if self.lowered:
            lowered = source.lower()
            return any(word in lowered for word in self.lowered)
        return False


class TriggerTable:
    """Which rules of a rule set a module's text triggers, the answers of `Triggers.found_in`
    for every rule at once.

    Asked rule by rule, the gates cost a tenth of the static pass on torch's sources: ~60
    gated rules a module, each a few calls deep. Here the one-word tokens of all the rules
    are looked up once each in the module's vocabulary, and each token found turns on the
    rules it triggers; only the rules still off ask their other tokens (remembered by the
    text, as rules' own `in` asks are)."""

    def __init__(self, triggers: list[Triggers]) -> None:
        self._size = len(triggers)
        self._always = [i for i, t in enumerate(triggers) if not t]
        by_word: dict[str, list[int]] = {}
        for index, trigger in enumerate(triggers):
            for word in trigger.words:
                if (_PLANS.get(word) or _plan(word))[0] is not None:
                    by_word.setdefault(word, []).append(index)
        self._by_word = [(word, word.encode("ascii"), rules) for word, rules in by_word.items()]
        self._rest = [
            (index, trigger)
            for index, trigger in enumerate(triggers)
            if trigger
            and (
                trigger.all_of
                or trigger.lowered
                or trigger.for_identifiers
                or any((_PLANS.get(w) or _plan(w))[0] is None for w in trigger.words)
            )
        ]

    def live(self, source: ModuleText) -> list[bool]:
        """Per rule, in the table's order: whether `source` triggers it."""
        live = [False] * self._size
        for index in self._always:
            live[index] = True
        vocabulary = source._words()
        found = source._found
        for word, encoded, indexes in self._by_word:
            found[word] = hit = encoded in vocabulary
            if hit:
                for index in indexes:
                    live[index] = True
        for index, trigger in self._rest:
            if not live[index]:
                live[index] = trigger.found_in(source)
        return live
