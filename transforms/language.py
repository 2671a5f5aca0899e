"""How well a decoded text reads as a language: the test a codec must pass to count as
faithful (transforms/text.py). py3langid places the text (its model ships in the wheel);
word-shape checks catch what a misread code page makes of real words, which a language
identifier alone still places somewhere (Thai for bytes read as cp874, Cyrillic for
Hebrew read as cp1251)."""

from __future__ import annotations

import functools
import unicodedata

_LANGID_CHARS = 2000  # what the language identifier scores per candidate
# A faithful decode: the identifier is this sure of one language ...
MIN_LANGUAGE_CONFIDENCE = 0.5
# ... and its n-gram features cover this share of the bytes (mojibake hits few).
MIN_FEATURE_COVERAGE = 0.5
_NOT_A_LANGUAGE = {"zxx", "und"}  # no linguistic content / undetermined


@functools.cache
def _identifier():
    """py3langid's identifier, loaded once per process (~3 s), only for non-UTF-8 files."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _min_confidence(n_bytes: int) -> float:
    """The identifier's confidence a decode needs: MIN_LANGUAGE_CONFIDENCE from 256
    bytes of text, less below (a sentence or two can be placed only so surely)."""
    return MIN_LANGUAGE_CONFIDENCE * min(1.0, max(0.3, n_bytes / 256))


def placement(text: str) -> tuple[str, float]:
    """(language, score): how well the identifier places `text` in a language.

    score = its confidence x the share of the text's bytes its n-gram features cover x
    (1 - the share of malformed words): mojibake of a real text is often still put in
    *some* language (Thai for bytes read as cp874), but with few of that language's
    n-grams and with words no language writes. 0.0 when no language fits.
    """
    from py3langid.langid import visit_counts

    ident = _identifier()
    sample = text[:_LANGID_CHARS]
    lang, confidence = ident.classify(sample)
    encoded = ident._encode(sample)  # the identifier's own normalization: NFC, UTF-8
    visits = visit_counts(ident.tk_nextmove, ident._rowbase, ident.tk_output, encoded)
    coverage = sum(visits.values()) / len(encoded) if visits and encoded else 0.0
    penalty = _malformed(sample)
    if (lang in _NOT_A_LANGUAGE or confidence < _min_confidence(len(encoded))
            or coverage < MIN_FEATURE_COVERAGE or penalty >= MAX_MALFORMED):
        return lang, 0.0
    return lang, float(confidence) * coverage * (1.0 - penalty)


# Thai vowels written before their consonant, and sara am / mai yamok / paiyannoi:
# a combining mark never follows one of them in Thai.
_NO_MARK_AFTER = frozenset("\u0e40\u0e41\u0e42\u0e43\u0e44\u0e33\u0e46\u0e2f")
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "HANGUL": "HANGUL",
                  "HALFWIDTH": "CJK", "FULLWIDTH": "CJK", "IDEOGRAPHIC": "CJK"}
MAX_MALFORMED = 0.25


@functools.lru_cache(maxsize=4096)
def _script(c: str) -> str:
    name = unicodedata.name(c, "")
    first = name.split(" ", 1)[0]
    return _SCRIPT_GROUPS.get(first, first)


def _bad_word(word: str) -> bool:
    """What a misread code page makes of real words: letters of two scripts in one word
    ('Dйjа'), a capital after a small letter ('DÚjÓ', 'ëÏÇÄÁ'), a non-ASCII digit among
    letters ('๐าษ'), or a lone one- or two-ideograph 'word' between spaces ('幻 庇'), which
    Chinese and Japanese, written without spaces, do not make; a character outside the
    Basic Multilingual Plane (rare ideographs) likewise."""
    scripts, lower_seen, letters, digit = set(), False, 0, False
    for c in word:
        if c > "\uffff":
            return True
        if c.isdigit() and not c.isascii():
            digit = True
        if not c.isalpha():
            continue
        letters += 1
        scripts.add(_script(c))
        if c.isupper() and lower_seen:
            return True
        lower_seen = lower_seen or c.islower()
    return len(scripts) > 1 or (digit and letters > 0) or (scripts == {"CJK"} and letters <= 2)


def _malformed(text: str) -> float:
    """Share of malformed words, plus (weighted) combining marks with no letter to sit
    on and C1 control characters: real text has almost none of either."""
    words = [w for w in text.split() if any(c.isalpha() for c in w)]
    bad = sum(_bad_word(w) for w in words) / len(words) if words else 0.0
    c1 = sum(1 for c in text if "\x80" <= c <= "\x9f") / (len(text) or 1)
    return min(1.0, bad + 4.0 * _orphan_marks(text) + 10.0 * c1 + _caseless(text))


def _caseless(text: str) -> float:
    """0.25 when a script with capitals is written without any (>= 20 letters): an
    uncased script (Hebrew, Arabic) misread as Cyrillic or Greek comes out in one case."""
    cased = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    if len(cased) < 20:
        return 0.0
    upper = sum(c.isupper() for c in cased)
    return 0.25 if upper == 0 or upper == len(cased) else 0.0


def _orphan_marks(text: str) -> float:
    """Share of combining marks (Mn) with no letter to sit on: after a space, a
    punctuation mark, the start, or a letter that takes none (cp874 mojibake)."""
    orphans = 0
    prev = " "
    for c in text:
        if unicodedata.category(c) == "Mn":
            cat = unicodedata.category(prev)
            if not (cat[0] == "L" or cat == "Mn") or prev in _NO_MARK_AFTER:
                orphans += 1
        prev = c
    letters = sum(1 for c in text if c.isalpha()) or 1
    return orphans / letters
