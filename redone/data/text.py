"""Text units shared by the curation steps: tokens, normalisation, symbols, and fast n-gram hashing.

Definitions
- token: on NFKC + case-folded text, a run of letters/digits of a non-CJK script ("don't" is two
  tokens, "don" and "t") or one single CJK character (Han, kana, Hangul). Punctuation, emoji and
  whitespace are not tokens. Word n-grams over these tokens are therefore character n-grams for
  Chinese and word n-grams for English, and mixed text mixes both naturally.
- symbol: a character that is not a letter, number, combining mark, punctuation (Unicode P*),
  whitespace or emoji. Emoji and pictographs count as text because SNS notes use them as words
  (counting them would drop ordinary notes); what is left is math/currency/box-drawing symbols,
  ASCII ``$+<=>^`|~``, control/format/private-use characters and U+FFFD: markup and encoding debris.
- exact-normalised text: NFKC, case-folded, punctuation and symbols replaced by spaces (emoji kept),
  whitespace collapsed. Two texts that differ only in case/whitespace/punctuation are exact dups.

Hashing: stable 64-bit token ids (blake2b, not Python's salted hash) and ``TokenBatch``, which hashes
every k-token window of many documents at once with prefix sums (no Python loop over windows); used by
near dedup (shingles) and decontamination (n-grams).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import numpy as np

# Han (incl. extensions and compatibility ideographs), kana, Hangul, bopomofo, CJK radicals.
CJK_RANGES = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3131-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
# Latin letters, including accented and fullwidth forms (but not the x/÷ signs at U+D7/U+F7).
LATIN_RANGES = (
    "A-Za-z\u00aa\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u2c60-\u2c7f"
    "\ua720-\ua7ff\uab30-\uab6f\uff21-\uff3a\uff41-\uff5a"
)
# Emoji and pictographs (plus the joiners and selectors emoji sequences are built from). A range
# list rather than the Extended_Pictographic property because `re` has no \p{...}.
# fmt: off
_EMOJI_RANGES = (
    (0x1F000, 0x1FAFF), (0x2190, 0x21FF), (0x2300, 0x23FF), (0x2460, 0x24FF), (0x25A0, 0x27BF),
    (0x2900, 0x297F), (0x2B00, 0x2BFF), (0xE0020, 0xE007F), (0xFE0E, 0xFE0F),
    (0x200D, 0x200D), (0x20E3, 0x20E3), (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C),
    (0x2049, 0x2049), (0x2122, 0x2122), (0x2139, 0x2139), (0x3030, 0x3030), (0x303D, 0x303D),
    (0x3297, 0x3297), (0x3299, 0x3299),
)
# fmt: on

_TOKEN_RE = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+")
CJK_RUN_RE = re.compile(f"[{CJK_RANGES}]+")
LATIN_RUN_RE = re.compile(f"[{LATIN_RANGES}]+")


def _ranges_to_class(code_points: list[int]) -> str:
    """Compress sorted code points into a regex character-class body (``a-z`` style ranges)."""
    parts, start, prev = [], None, None
    for cp in code_points + [-2]:
        if start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            lo, hi = re.escape(chr(start)), re.escape(chr(prev))
            parts.append(lo if start == prev else f"{lo}-{hi}")
        start = prev = cp
    return "".join(parts)


_ASTRAL_RUN_RE = re.compile("[\U00010000-\U0010ffff]+")


def _is_emoji(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _EMOJI_RANGES)


def _is_symbol(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "SC" and cat != "Cs" and not ch.isspace() and not _is_emoji(ord(ch))


@functools.cache
def _bmp_classes() -> tuple[re.Pattern, re.Pattern]:
    """(symbol-run regex, punctuation-or-symbol-run regex) over the Basic Multilingual Plane.

    Built once from unicodedata on first use. Only the BMP goes into the regexes: `re` matches a
    BMP class with a bitmap, but tests astral ranges one by one (60x slower on the SNS notes), so
    astral characters (mostly emoji) are classified by ``_is_astral_symbol`` instead.
    """
    symbols, punct = [], []
    for cp in range(0x10000):
        ch = chr(cp)
        if unicodedata.category(ch)[0] == "P":
            punct.append(cp)
        elif _is_symbol(ch):
            symbols.append(cp)
    symbol_class = _ranges_to_class(symbols)
    return re.compile(f"[{symbol_class}]+"), re.compile(f"[{symbol_class}{_ranges_to_class(punct)}_]+")


@functools.cache
def _is_astral_symbol(ch: str) -> bool:
    return _is_symbol(ch)


@functools.cache
def _is_astral_punct_or_symbol(ch: str) -> bool:
    return _is_symbol(ch) or unicodedata.category(ch)[0] == "P"


def run_chars(pattern: re.Pattern, text: str) -> int:
    """Number of characters of ``text`` in runs matched by ``pattern`` (one C-level pass)."""
    return sum(map(len, pattern.findall(text)))


def count_symbols(text: str) -> int:
    """Number of symbol characters (module doc) in ``text``."""
    symbol_run, _ = _bmp_classes()
    astral = sum(sum(map(_is_astral_symbol, run)) for run in _ASTRAL_RUN_RE.findall(text))
    return run_chars(symbol_run, text) + astral


def _blank_astral(match: re.Match) -> str:
    return "".join(" " if _is_astral_punct_or_symbol(ch) else ch for ch in match.group())


def tokens(text: str) -> list[str]:
    """Normalised tokens: non-CJK letter/digit runs and single CJK characters (see module doc)."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise_exact(text: str) -> str:
    """The text exact dedup compares: NFKC, case-folded, punctuation/symbols removed, spaces collapsed."""
    _, strip = _bmp_classes()
    text = strip.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    text = _ASTRAL_RUN_RE.sub(_blank_astral, text)
    return " ".join(text.split())


# ---------------------------------------------------------------- hashing: stable ids, rolling hashes of windows

_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)


class _TokenIds(dict):
    """token -> stable 64-bit id (blake2b), memoised. Python's hash() is salted per process,
    which would make MinHash signatures (and so near-dedup decisions) vary between runs."""

    max_size = 4_000_000

    def __missing__(self, tok: str) -> int:
        if len(self) >= self.max_size:  # bound memory on huge vocabularies
            self.clear()
        value = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
        self[tok] = value
        return value


_TOKEN_IDS = _TokenIds()


def ids_of_tokens(toks: list[str]) -> np.ndarray:
    return np.fromiter(map(_TOKEN_IDS.__getitem__, toks), dtype=np.uint64, count=len(toks))


def token_ids(texts: list[str]) -> list[np.ndarray]:
    """Stable 64-bit ids of each text's tokens. ``dedup`` and ``contamination`` accept these
    precomputed, so that ``curate`` tokenises each document once for both."""
    return [ids_of_tokens(tokens(text)) for text in texts]


def stable_hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class _Powers:
    """Cached B^i and B^-i (mod 2**64) for i < n, grown on demand."""

    def __init__(self) -> None:
        self.pos = np.ones(1, dtype=np.uint64)
        self.neg = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pos) < n:
            size = max(n, 2 * len(self.pos))
            self.pos, self.neg = self._cumulative(_BASE, size), self._cumulative(_BASE_INV, size)
        return self.pos[:n], self.neg[:n]

    @staticmethod
    def _cumulative(base: int, size: int) -> np.ndarray:
        factors = np.full(size, base, dtype=np.uint64)
        factors[0] = 1
        return np.cumprod(factors)  # uint64 products wrap around: arithmetic modulo 2**64


_POWERS = _Powers()


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial hash over all 64 bits (bijective)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class TokenBatch:
    """Token ids of many documents concatenated, with prefix sums for O(1) window hashes.

    hash(ids[s : s + k]) = mix64(sum_m ids[s + m] * B^-m), computed for every window at once as
    (Q[s + k] - Q[s]) * B^s with Q the prefix sum of ids[j] * B^-j: no Python loop over windows.
    """

    def __init__(self, id_lists: list[np.ndarray]) -> None:
        self.lengths = np.array([len(a) for a in id_lists], dtype=np.int64)
        self.starts = np.zeros(len(id_lists) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        ids = np.concatenate(id_lists) if id_lists else np.zeros(0, dtype=np.uint64)
        self.n_tokens = len(ids)
        self._pos, neg = _POWERS.get(self.n_tokens + 1)
        self._prefix = np.zeros(self.n_tokens + 1, dtype=np.uint64)
        np.cumsum(ids * neg[: self.n_tokens], out=self._prefix[1:])

    def span_hashes(self, starts: np.ndarray, lengths: np.ndarray | int) -> np.ndarray:
        raw = (self._prefix[starts + lengths] - self._prefix[starts]) * self._pos[starts]
        return _mix64(raw)

    def windows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every k-token window that lies inside one document, and its document index."""
        if k > self.n_tokens:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        doc = np.repeat(np.arange(len(self.lengths)), self.lengths)[: self.n_tokens - k + 1]
        pos = np.arange(self.n_tokens - k + 1)
        inside = pos + k <= self.starts[1:][doc]
        pos, doc = pos[inside], doc[inside]
        return self.span_hashes(pos, k), doc

    def whole_docs(self, docs: np.ndarray) -> np.ndarray:
        """Hash of each listed document's full token sequence (same hash as a window of its length)."""
        return self.span_hashes(self.starts[docs], self.lengths[docs])


def unique_pairs(hashes: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated (doc, hash) pairs, so overlap counts are counts of *distinct* n-grams."""
    if len(hashes) == 0:
        return hashes, docs
    order = np.lexsort((hashes, docs))
    hashes, docs = hashes[order], docs[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = (hashes[1:] != hashes[:-1]) | (docs[1:] != docs[:-1])
    return hashes[first], docs[first]


def doc_batches(n_docs: int, sizes: list[int], budget: int = 2_000_000):
    """Yield index ranges of documents whose total size stays under ``budget`` (bounds memory)."""
    start, total = 0, 0
    for i in range(n_docs):
        if total and total + sizes[i] > budget:
            yield range(start, i)
            start, total = i, 0
        total += sizes[i]
    if start < n_docs:
        yield range(start, n_docs)
