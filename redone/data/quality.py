"""Data curation for continued pretraining: quality filters, duplicate removal, decontamination.

Pure Python + numpy over a list of texts (no model). ``curate`` chains the three stages
(filter -> dedup -> decontaminate) and returns a ``CurationReport`` whose numbers add up per
source: ``docs_in == kept + sum(every drop reason)``.

Features
- Quality filters (``apply_filters``). They run in this fixed order and the first one that fails
  is the single reason a document is dropped (so reason counts add up):
  ``too_short, too_long, url_only, hashtag_only, symbol_ratio, repeated_lines, ngram_repetition,
  script``. Defaults are tuned to keep emoji- and hashtag-heavy SNS notes (>= 99% of SNS-Bench
  note contents survive them; see tests/data/test_quality.py).
- Exact dedup on normalised text and near dedup with MinHash + LSH (datasketch); the first
  occurrence is kept, so results are deterministic and depend only on input order.
- Decontamination against evaluation sets with hashed n-grams (word n-grams for Latin text,
  character n-grams for CJK), with loaders for the SNS-Bench test folder and SNS-TransBench.
- ``format_report`` prints the report as a console table (reasons x sources) plus the largest
  duplicate clusters.

Definitions shared by every stage
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
- length (min_chars/max_chars): characters after strip(), each CJK character counted twice.

Filter definitions (defaults in FilterConfig; measured on the 3,868 SNS-Bench train contents)
- url_only: has a URL and no word once URLs are removed. hashtag_only: has a hashtag ("#Topic[Topic]#"
  or "#word") and no word once hashtags, [emoji codes], @mentions and URLs are removed.
- symbol_ratio: symbols / non-space characters > 0.3 (the real notes peak at 0.10).
- repeated_lines: lines repeating an earlier line / lines > 0.3, over lines that contain a word.
- ngram_repetition: share of token characters covered by the most frequent token 3-gram, counted only
  if it occurs 3+ times, on the text without SNS markup, > 0.2 (drops 0.7% of the real notes).
- script: share of letters in the wanted script (latin | cjk | mixed = either) < min_script_share.

Dedup and decontamination
- near dedup: MinHash (num_perm permutations, datasketch's affine32 scheme, computed for all texts at
  once in numpy) over shingles ("word3": 3 consecutive tokens; "char5": 5 characters of the
  exact-normalised text) + LSH at ``threshold``; LSH candidates are confirmed by estimated Jaccard.
- decontamination: a text is contaminated by an eval set when it contains at least ``min_overlap``
  distinct indexed n-grams of ``ngram`` (13) tokens of that set; the drop is attributed to the set
  sharing the most n-grams (ties: first set). Items of ``min_item_tokens``..ngram-1 tokens are
  indexed whole (one n-gram of their own length); shorter ones ("Yes") are skipped. n-grams found
  in 2+ distinct items of a set (prompt templates) are not indexed.

Config keys (one dataclass per group; the config schema nests them under ``data.quality``)
- ``data.quality.filters``: min_chars, max_chars, max_symbol_ratio, max_repeated_line_ratio,
  max_ngram_repetition, ngram_repetition_n, script, min_script_share, drop_url_only,
  drop_hashtag_only, enabled
- ``data.quality.dedup``: exact, near, threshold, num_perm, shingle, seed
- ``data.quality.decontam``: ngram, min_overlap, min_item_tokens, boilerplate_min_items, eval_sets

Errors: ``ConfigError`` for an invalid config value (the message names the key); ``DataError`` for an
unreadable eval set (the message names the file); ``RedoneError`` for mismatched inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redone.errors import ConfigError, DataError, RedoneError

FILTERS_KEY = "data.quality.filters"
DEDUP_KEY = "data.quality.dedup"
DECONTAM_KEY = "data.quality.decontam"

# ---------------------------------------------------------------------------------------------
# Character classes and tokenisation
# ---------------------------------------------------------------------------------------------

# Han (incl. extensions and compatibility ideographs), kana, Hangul, bopomofo, CJK radicals.
_CJK_RANGES = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3131-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
)
# Latin letters, including accented and fullwidth forms (but not the x/÷ signs at U+D7/U+F7).
_LATIN_RANGES = (
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

_TOKEN_RE = re.compile(f"[{_CJK_RANGES}]|[^\\W_{_CJK_RANGES}]+")
_CJK_RUN_RE = re.compile(f"[{_CJK_RANGES}]+")
_LATIN_RUN_RE = re.compile(f"[{_LATIN_RANGES}]+")
_LETTER_RUN_RE = re.compile(r"[^\W\d_]+")
_WORD_CHAR_RE = re.compile(r"[^\W_]")

# Spelled-out case variants instead of re.IGNORECASE, which makes this scan 3x slower.
_URL_RE = re.compile(r"(?:https?://|HTTPS?://|www\.|WWW\.)\S+")
# "#Daily Outfit[Topic]#" / "#Today's Share [topic]#": the topic-hashtag form of the SNS notes.
_TOPIC_HASHTAG_RE = re.compile(r"#[^#\n]{0,60}?\[(?:topics?|hashtags?|tags?|话题)\]\s*#+", re.IGNORECASE)
_PLAIN_HASHTAG_RE = re.compile(r"#[^\W_][\w'-]*")
# "[crying R]", "[doge]", "[Topic]": bracketed emoji/markup codes.
_BRACKET_CODE_RE = re.compile(r"\[[^\[\]\n]{1,24}\]")
_MENTION_RE = re.compile(r"@[\w.-]+")


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


def _run_chars(pattern: re.Pattern, text: str) -> int:
    """Number of characters of ``text`` in runs matched by ``pattern`` (one C-level pass)."""
    return sum(map(len, pattern.findall(text)))


def count_symbols(text: str) -> int:
    """Number of symbol characters (module doc) in ``text``."""
    symbol_run, _ = _bmp_classes()
    astral = sum(sum(map(_is_astral_symbol, run)) for run in _ASTRAL_RUN_RE.findall(text))
    return _run_chars(symbol_run, text) + astral


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


# ---------------------------------------------------------------------------------------------
# Hashing: stable 64-bit token ids and vectorised rolling hashes of token windows
# ---------------------------------------------------------------------------------------------

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


def _token_ids(toks: list[str]) -> np.ndarray:
    return np.fromiter(map(_TOKEN_IDS.__getitem__, toks), dtype=np.uint64, count=len(toks))


def token_ids(texts: list[str]) -> list[np.ndarray]:
    """Stable 64-bit ids of each text's tokens. ``dedup`` and ``contamination`` accept these
    precomputed, so that ``curate`` tokenises each document once for both."""
    return [_token_ids(tokens(text)) for text in texts]


def _stable_hash64(text: str) -> int:
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


class _TokenBatch:
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


def _unique_pairs(hashes: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated (doc, hash) pairs, so overlap counts are counts of *distinct* n-grams."""
    if len(hashes) == 0:
        return hashes, docs
    order = np.lexsort((hashes, docs))
    hashes, docs = hashes[order], docs[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = (hashes[1:] != hashes[:-1]) | (docs[1:] != docs[:-1])
    return hashes[first], docs[first]


def _batches(n_docs: int, sizes: list[int], budget: int = 2_000_000):
    """Yield index ranges of documents whose total size stays under ``budget`` (bounds memory)."""
    start, total = 0, 0
    for i in range(n_docs):
        if total and total + sizes[i] > budget:
            yield range(start, i)
            start, total = i, 0
        total += sizes[i]
    if start < n_docs:
        yield range(start, n_docs)


# ---------------------------------------------------------------------------------------------
# Quality filters
# ---------------------------------------------------------------------------------------------

FILTER_NAMES = (
    "too_short",
    "too_long",
    "url_only",
    "hashtag_only",
    "symbol_ratio",
    "repeated_lines",
    "ngram_repetition",
    "script",
)
SCRIPTS = ("any", "latin", "cjk", "mixed")


@dataclass
class FilterConfig:
    """``data.quality.filters``: thresholds of the quality filters (see the module doc for order)."""

    min_chars: int = 20  # of weighted_length(): CJK characters count twice, so 10 Chinese characters pass
    max_chars: int = 100_000
    max_symbol_ratio: float = 0.3  # symbols / non-space chars; emoji are not symbols (module doc)
    max_repeated_line_ratio: float = 0.3  # duplicate lines / lines, over lines that contain a word
    max_ngram_repetition: float = 0.2  # share of token chars covered by the most repeated n-gram
    ngram_repetition_n: int = 3
    script: str = "any"  # any | latin | cjk | mixed (= latin + cjk), measured over letters
    min_script_share: float = 0.0
    drop_url_only: bool = True
    drop_hashtag_only: bool = True
    enabled: list[str] | None = None  # filters that run, by name (None = all that are switched on)

    def __post_init__(self) -> None:
        _check(self.min_chars >= 0, FILTERS_KEY, "min_chars", "must be >= 0")
        _check(self.max_chars > self.min_chars, FILTERS_KEY, "max_chars", "must be > min_chars")
        for name in (
            "max_symbol_ratio",
            "max_repeated_line_ratio",
            "max_ngram_repetition",
            "min_script_share",
        ):
            _check(0.0 <= getattr(self, name) <= 1.0, FILTERS_KEY, name, "must be in [0, 1]")
        _check(self.ngram_repetition_n >= 1, FILTERS_KEY, "ngram_repetition_n", "must be >= 1")
        _check(self.script in SCRIPTS, FILTERS_KEY, "script", f"must be one of {', '.join(SCRIPTS)}")
        if self.script != "any":
            # Otherwise the script filter would run and drop nothing: a setting the code ignores.
            _check(
                self.min_script_share > 0,
                FILTERS_KEY,
                "min_script_share",
                f"must be > 0 when script is {self.script!r}",
            )
        if self.enabled is not None:
            for name in self.enabled:
                _check(
                    name in FILTER_NAMES,
                    FILTERS_KEY,
                    "enabled",
                    f"has unknown filter {name!r} (known: {', '.join(FILTER_NAMES)})",
                )
            for name, switch, on in (
                ("url_only", "drop_url_only", self.drop_url_only),
                ("hashtag_only", "drop_hashtag_only", self.drop_hashtag_only),
                ("script", "script", self.script != "any"),
            ):
                _check(
                    name not in self.enabled or on,
                    FILTERS_KEY,
                    "enabled",
                    f"lists {name!r} but {FILTERS_KEY}.{switch} switches it off",
                )

    def active(self) -> list[str]:
        """The filters that run, in the fixed order of FILTER_NAMES."""
        switched_on = {
            "url_only": self.drop_url_only,
            "hashtag_only": self.drop_hashtag_only,
            "script": self.script != "any",
        }
        return [
            name
            for name in FILTER_NAMES
            if switched_on.get(name, True) and (self.enabled is None or name in self.enabled)
        ]


def _check(ok: bool, section: str, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key} {message}")


def _has_words(text: str) -> bool:
    return _WORD_CHAR_RE.search(text) is not None


@functools.lru_cache(maxsize=4)  # the filters of one document ask twice (too_short, too_long)
def weighted_length(text: str) -> int:
    """Characters after strip(), with each CJK character counted twice: a Chinese character carries
    about as much as a short English word, so a plain count would drop real Chinese comments
    ("这个软件能找女朋友吗？我喜欢胖胖的女生", 19 chars) that an English filter of the same length keeps."""
    text = text.strip()
    return len(text) + _run_chars(_CJK_RUN_RE, text)


def _fails_too_short(text: str, cfg: FilterConfig) -> bool:
    return weighted_length(text) < cfg.min_chars


def _fails_too_long(text: str, cfg: FilterConfig) -> bool:
    return weighted_length(text) > cfg.max_chars


def _fails_url_only(text: str, cfg: FilterConfig) -> bool:
    """At least one URL and no word left once URLs are removed."""
    stripped, n_urls = _URL_RE.subn(" ", text)
    return n_urls > 0 and not _has_words(stripped)


@functools.lru_cache(maxsize=4)  # hashtag_only and ngram_repetition both need it, for the same text
def _strip_sns_markup(text: str) -> tuple[str, int]:
    """Text without hashtags, [emoji codes], @mentions and URLs; and the number of hashtags."""
    text, n_topic = _TOPIC_HASHTAG_RE.subn(" ", text)
    text, n_plain = _PLAIN_HASHTAG_RE.subn(" ", text)
    for pattern in (_BRACKET_CODE_RE, _MENTION_RE, _URL_RE):
        text = pattern.sub(" ", text)
    return text, n_topic + n_plain


def _fails_hashtag_only(text: str, cfg: FilterConfig) -> bool:
    """At least one hashtag and no word left once hashtags, [emoji codes], @mentions, URLs go."""
    stripped, n_hashtags = _strip_sns_markup(text)
    return n_hashtags > 0 and not _has_words(stripped)


def symbol_ratio(text: str) -> float:
    """Symbols / non-whitespace characters (symbol as defined in the module doc)."""
    non_space = sum(map(len, text.split()))
    return count_symbols(text) / non_space if non_space else 0.0


def _fails_symbol_ratio(text: str, cfg: FilterConfig) -> bool:
    return symbol_ratio(text) > cfg.max_symbol_ratio


def repeated_line_ratio(text: str) -> float:
    """Share of lines that repeat an earlier line. Only lines with a word count: decorative
    separator lines ("———", "🌸🌸") repeat legitimately in SNS notes."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if _has_words(line)]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def _fails_repeated_lines(text: str, cfg: FilterConfig) -> bool:
    return repeated_line_ratio(text) > cfg.max_repeated_line_ratio


_MIN_REPEATS = 3  # a title restated once in the body (count 2) is normal in SNS notes; spam loops repeat more


def ngram_repetition(text: str, n: int = 3) -> float:
    """Gopher-style repetition: the share of token characters covered by the occurrences of the
    most frequent token n-gram, if it occurs at least 3 times (else 0). Overlapping occurrences
    are counted once, so the value is in [0, 1]. SNS markup (hashtags, [emoji codes], mentions,
    URLs) is removed first: hashtags restate the note's words by design, and a repeated reaction
    code is not boilerplate. Measured on SNS-Bench notes, counting twice-seen n-grams with markup
    would drop 4.6% of real notes at 0.2; this definition drops 0.7% and still scores
    "buy now buy now buy now ..." at 0.67."""
    toks = tokens(_strip_sns_markup(text)[0])
    if len(toks) < n + 1:
        return 0.0
    grams = list(zip(*(toks[i:] for i in range(n))))
    top, count = Counter(grams).most_common(1)[0]
    if count < _MIN_REPEATS:
        return 0.0
    covered = bytearray(len(toks))
    for i, gram in enumerate(grams):
        if gram == top:
            covered[i : i + n] = b"\x01" * n
    total = sum(map(len, toks))
    return sum(len(t) for t, c in zip(toks, covered) if c) / total


def _fails_ngram_repetition(text: str, cfg: FilterConfig) -> bool:
    return ngram_repetition(text, cfg.ngram_repetition_n) > cfg.max_ngram_repetition


def script_share(text: str, script: str) -> float:
    """Share of letters in the script: latin, cjk, or mixed (latin + cjk). 0.0 without letters."""
    letters = _run_chars(_LETTER_RUN_RE, text)
    if not letters:
        return 0.0
    latin = _run_chars(_LATIN_RUN_RE, text) if script in ("latin", "mixed") else 0
    cjk = _run_chars(_CJK_RUN_RE, text) if script in ("cjk", "mixed") else 0
    return (latin + cjk) / letters


def _fails_script(text: str, cfg: FilterConfig) -> bool:
    return script_share(text, cfg.script) < cfg.min_script_share


_FILTER_FUNCS = {
    "too_short": _fails_too_short,
    "too_long": _fails_too_long,
    "url_only": _fails_url_only,
    "hashtag_only": _fails_hashtag_only,
    "symbol_ratio": _fails_symbol_ratio,
    "repeated_lines": _fails_repeated_lines,
    "ngram_repetition": _fails_ngram_repetition,
    "script": _fails_script,
}


def filter_reasons(texts: list[str], cfg: FilterConfig) -> list[str | None]:
    """Per text, the name of the first filter it fails (in FILTER_NAMES order), or None if kept."""
    checks = [(name, _FILTER_FUNCS[name]) for name in cfg.active()]
    reasons: list[str | None] = []
    for text in texts:
        reasons.append(next((name for name, fails in checks if fails(text, cfg)), None))
    return reasons


def apply_filters(texts: list[str], cfg: FilterConfig) -> tuple[list[int], Counter]:
    """Kept indices and drop counts by reason (the first failing filter is the reason)."""
    reasons = filter_reasons(texts, cfg)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    return kept, Counter(reason for reason in reasons if reason is not None)


# ---------------------------------------------------------------------------------------------
# Dedup: exact (normalised-text hash) then near (MinHash + LSH)
# ---------------------------------------------------------------------------------------------

_SHINGLE_RE = re.compile(r"(word|char)(\d+)")
_SIGNATURE_CHUNK = 32_768  # shingles per (chunk x num_perm) uint32 matrix: 16 MB at num_perm=128


@dataclass
class DedupConfig:
    """``data.quality.dedup``: exact and near-duplicate removal."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of shingle sets at which docs are near dups
    num_perm: int = 128
    # wordN: N consecutive tokens (so N characters of CJK text) | charN: N chars of normalised text.
    shingle: str = "word3"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.threshold <= 1.0, DEDUP_KEY, "threshold", "must be in (0, 1]")
        _check(self.num_perm >= 16, DEDUP_KEY, "num_perm", "must be >= 16")
        _check(self.seed >= 0, DEDUP_KEY, "seed", "must be >= 0")
        match = _SHINGLE_RE.fullmatch(self.shingle)
        _check(
            match is not None and int(match.group(2)) >= 1,
            DEDUP_KEY,
            "shingle",
            f"must look like 'word3' or 'char5', got {self.shingle!r}",
        )

    @property
    def shingle_kind(self) -> str:
        return _SHINGLE_RE.fullmatch(self.shingle).group(1)

    @property
    def shingle_size(self) -> int:
        return int(_SHINGLE_RE.fullmatch(self.shingle).group(2))


@dataclass
class DedupResult:
    kept: list[int]
    dropped_exact: int
    dropped_near: int
    # Each cluster lists the kept representative first, then its duplicates in input order.
    clusters: list[list[int]]
    dropped: dict[int, str] = field(default_factory=dict)  # index -> "exact" | "near"


def _char_ids(text: str) -> np.ndarray:
    # Characters of the normalised text; code points are spread by an odd multiplier so that
    # the rolling hash mixes them as well as it mixes token ids.
    chars = np.frombuffer(normalise_exact(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return chars * np.uint64(0xD6E8FEB86659FD93)


def _shingle_hashes(texts: list[str], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle of every text, and the text index of each.

    A text with fewer than k units gets one shingle for all of it (or, with no units at all, the
    hash of its normalised text), so every text has a signature and tiny texts are compared as wholes.
    """
    batch = _TokenBatch(ids)
    hashes, docs = batch.windows(k)
    short = np.flatnonzero((batch.lengths < k) & (batch.lengths > 0))
    empty = np.flatnonzero(batch.lengths == 0)
    empty_hashes = np.array([_stable_hash64(normalise_exact(texts[i])) for i in empty], dtype=np.uint64)
    hashes = np.concatenate([hashes, batch.whole_docs(short), empty_hashes])
    docs = np.concatenate([docs, short, empty])
    order = np.argsort(docs, kind="stable")
    return hashes[order], docs[order]


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser, as datasketch applies it before its affine32 permutations."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


@functools.cache
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations


def minhash_signatures(
    hashes32: np.ndarray, docs: np.ndarray, n_docs: int, num_perm: int, seed: int
) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) for many documents at once.

    Bit-identical to ``datasketch.MinHash(num_perm, seed, hashfunc=identity).update_batch(hashes32)``
    per document (the tests check this), but one numpy pass per chunk of shingles instead of a
    Python call per document. ``docs`` must be sorted.
    """
    a, b = _permutations(num_perm, seed)
    signatures = np.full((n_docs, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    mixed = _fmix32(hashes32.astype(np.uint32))
    for lo in range(0, len(mixed), _SIGNATURE_CHUNK):
        chunk_docs = docs[lo : lo + _SIGNATURE_CHUNK]
        permuted = mixed[lo : lo + _SIGNATURE_CHUNK, None] * a[None, :] + b[None, :]  # wraps mod 2**32
        seg_starts = np.flatnonzero(np.r_[True, chunk_docs[1:] != chunk_docs[:-1]])
        seg_docs = chunk_docs[seg_starts]
        signatures[seg_docs] = np.minimum(
            signatures[seg_docs], np.minimum.reduceat(permuted, seg_starts, axis=0)
        )
    return signatures


def _near_duplicates(texts: list[str], cfg: DedupConfig, ids: list[np.ndarray] | None) -> dict[int, int]:
    """Greedy near dedup: {index of a dropped text: index of the kept text it duplicates}.

    Texts are visited in order; each is queried against the LSH of the texts kept so far, LSH
    candidates are confirmed by the signatures' estimated Jaccard (LSH alone has false positives),
    and the most similar confirmed candidate (ties: the earliest) becomes its representative.
    Only kept texts are indexed, so a chain a~b~c with b dropped compares c against a only.
    """
    from datasketch import MinHash, MinHashLSH

    if not texts:
        return {}
    perms = _permutations(cfg.num_perm, cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    signatures = np.zeros((len(texts), cfg.num_perm), dtype=np.uint32)
    sizes = [len(t) for t in texts]
    for rows in _batches(len(texts), sizes):
        chunk = [texts[i] for i in rows]
        if cfg.shingle_kind == "char":
            chunk_ids = [_char_ids(text) for text in chunk]
        else:
            chunk_ids = token_ids(chunk) if ids is None else ids[rows.start : rows.stop]
        hashes, docs = _shingle_hashes(chunk, chunk_ids, cfg.shingle_size)
        signatures[rows.start : rows.stop] = minhash_signatures(
            (hashes >> np.uint64(32)).astype(np.uint32), docs, len(rows), cfg.num_perm, cfg.seed
        )
    duplicate_of: dict[int, int] = {}
    for i in range(len(texts)):
        sketch = MinHash(seed=cfg.seed, hashvalues=signatures[i], permutations=perms, scheme="affine32")
        candidates = sorted(lsh.query(sketch))
        if candidates:
            similarity = (signatures[candidates] == signatures[i]).mean(axis=1)
            best = int(np.argmax(similarity))  # argmax returns the first maximum: the earliest text
            if similarity[best] >= cfg.threshold:
                duplicate_of[i] = candidates[best]
                continue
        lsh.insert(i, sketch, check_duplication=False)
    return duplicate_of


def dedup(texts: list[str], cfg: DedupConfig, *, ids: list[np.ndarray] | None = None) -> DedupResult:
    """Exact then near dedup; the first occurrence of each group is kept.

    ``ids``: optional ``token_ids(texts)``, computed here when not given."""
    representative: dict[int, int] = {}  # dropped index -> kept index
    dropped: dict[int, str] = {}
    survivors = list(range(len(texts)))
    if cfg.exact:
        first_seen: dict[bytes, int] = {}
        survivors = []
        for i, text in enumerate(texts):
            key = hashlib.blake2b(normalise_exact(text).encode(), digest_size=16).digest()
            if key in first_seen:
                representative[i], dropped[i] = first_seen[key], "exact"
            else:
                first_seen[key] = i
                survivors.append(i)
    if cfg.near:
        near = _near_duplicates(
            [texts[i] for i in survivors], cfg, None if ids is None else [ids[i] for i in survivors]
        )
        for sub, rep in near.items():
            representative[survivors[sub]], dropped[survivors[sub]] = survivors[rep], "near"
    clusters: dict[int, list[int]] = {}
    for i in sorted(representative):
        clusters.setdefault(representative[i], [representative[i]]).append(i)
    kinds = Counter(dropped.values())
    return DedupResult(
        kept=[i for i in range(len(texts)) if i not in dropped],
        dropped_exact=kinds["exact"],
        dropped_near=kinds["near"],
        clusters=[clusters[rep] for rep in sorted(clusters)],
        dropped=dropped,
    )


# ---------------------------------------------------------------------------------------------
# Decontamination
# ---------------------------------------------------------------------------------------------


@dataclass
class DecontamConfig:
    """``data.quality.decontam``: drop training texts that share n-grams with evaluation sets."""

    ngram: int = 13  # tokens: 13 words of Latin text, 13 characters of CJK text
    min_overlap: int = 1  # distinct eval n-grams a text must contain to count as contaminated
    # Eval items with fewer tokens than ``ngram`` are indexed whole (one n-gram of their own length);
    # items shorter than this are skipped: "Yes" or "Travel" would match half the corpus.
    min_item_tokens: int = 8
    # n-grams found in at least this many distinct items of one eval set (near-duplicate items
    # count once) belong to no single item: the benchmark's prompt template ("Please provide a list
    # of words you think are suitable ...", in variants) rather than item content. They are not
    # indexed, or every training text built from the same template would be dropped. 0 = keep all.
    boilerplate_min_items: int = 2
    eval_sets: list[str] = field(default_factory=list)  # SNS-Bench test folders, TransBench files, .jsonl

    def __post_init__(self) -> None:
        _check(self.ngram >= 1, DECONTAM_KEY, "ngram", "must be >= 1")
        _check(self.min_overlap >= 1, DECONTAM_KEY, "min_overlap", "must be >= 1")
        _check(
            1 <= self.min_item_tokens <= self.ngram, DECONTAM_KEY, "min_item_tokens", "must be in [1, ngram]"
        )
        _check(
            self.boilerplate_min_items == 0 or self.boilerplate_min_items >= 2,
            DECONTAM_KEY,
            "boilerplate_min_items",
            "must be 0 (off) or >= 2",
        )


@dataclass
class EvalIndex:
    """Hashed n-grams of each eval set (name -> sorted unique uint64 array)."""

    n: int
    grams: dict[str, np.ndarray]
    # Token lengths (< n) of the short items indexed whole; decontamination also hashes windows of
    # these lengths.
    short_lengths: tuple[int, ...] = ()
    items: dict[str, int] = field(default_factory=dict)  # items per set
    skipped_short: dict[str, int] = field(default_factory=dict)  # items under min_item_tokens
    boilerplate: dict[str, int] = field(default_factory=dict)  # template n-grams left out
    # The build settings, checked against the DecontamConfig the index is used with.
    min_item_tokens: int = 8
    boilerplate_min_items: int = 2

    @property
    def names(self) -> list[str]:
        return list(self.grams)

    @functools.cached_property
    def _union(self) -> tuple[np.ndarray, np.ndarray]:
        """All sets' n-grams (sorted) and a bitmap over their low bits, at ~32 bits per n-gram."""
        union = np.unique(np.concatenate([np.zeros(0, np.uint64), *self.grams.values()]))
        bits = int(min(max(32 * len(union), 1 << 16), 1 << 28)).bit_length()
        bitmap = np.zeros(1 << bits, dtype=bool)
        bitmap[union & np.uint64((1 << bits) - 1)] = True
        return union, bitmap

    def screen(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of the hashes that are in any set. The bitmap rejects almost every miss with one
        array lookup (~3% false positives), so only the rest pay for a binary search."""
        union, bitmap = self._union
        maybe = np.flatnonzero(bitmap[hashes & np.uint64(len(bitmap) - 1)])
        hit = np.zeros(len(hashes), dtype=bool)
        hit[maybe] = _member(hashes[maybe], union)
        return hit


def build_eval_index(
    eval_texts: dict[str, list[str]],
    n: int,
    *,
    min_item_tokens: int = 8,
    boilerplate_min_items: int = 2,
) -> EvalIndex:
    """Index every item of every eval set: all its n-grams, or the whole item if it is shorter
    than n tokens (and at least ``min_item_tokens`` long). See DecontamConfig for the knobs."""
    grams, items, skipped, boilerplate = {}, {}, {}, {}
    short_lengths: set[int] = set()
    for name, texts in eval_texts.items():
        batch = _TokenBatch([_token_ids(tokens(t)) for t in texts])
        hashes, docs = batch.windows(n)
        short = np.flatnonzero((batch.lengths < n) & (batch.lengths >= min_item_tokens))
        short_lengths.update(int(k) for k in batch.lengths[short])
        hashes, docs = np.concatenate([hashes, batch.whole_docs(short)]), np.concatenate([docs, short])
        template = np.zeros(0, dtype=np.uint64)
        if boilerplate_min_items:
            template = _shared_grams(texts, hashes, docs, boilerplate_min_items)
        unique = np.unique(hashes)
        grams[name] = unique[~np.isin(unique, template, assume_unique=True)]
        items[name] = len(texts)
        skipped[name] = int((batch.lengths < min_item_tokens).sum())
        boilerplate[name] = len(template)
    return EvalIndex(
        n,
        grams,
        tuple(sorted(short_lengths)),
        items,
        skipped,
        boilerplate,
        min_item_tokens,
        boilerplate_min_items,
    )


def _shared_grams(texts: list[str], hashes: np.ndarray, docs: np.ndarray, min_items: int) -> np.ndarray:
    """The n-grams found in at least ``min_items`` *distinct* items: prompt-template text.

    Benchmarks repeat an item with a different question or answer (the same note in three
    Hashtag items); such near-duplicate items are one item here (near dedup at the default
    threshold), so their shared n-grams, which are the note itself, stay in the index.
    """
    representative = np.arange(len(texts))
    for cluster in dedup(texts, DedupConfig()).clusters:
        representative[cluster[1:]] = cluster[0]
    hashes, _ = _unique_pairs(hashes, representative[docs])
    unique, counts = np.unique(hashes, return_counts=True)
    return unique[counts >= min_items]


def contamination(
    texts: list[str], index: EvalIndex, cfg: DecontamConfig, *, ids: list[np.ndarray] | None = None
) -> list[str | None]:
    """Per text, the eval set it is contaminated by (the set sharing the most distinct n-grams,
    ties: the first set in index order, at least ``min_overlap`` of them), or None if clean.

    ``ids``: optional ``token_ids(texts)``, computed here when not given."""
    _check_index_matches(index, cfg)
    names = index.names
    result: list[str | None] = [None] * len(texts)
    if not names:
        return result
    sizes = [len(t) for t in texts]
    for rows in _batches(len(texts), sizes):
        batch = _TokenBatch(
            token_ids([texts[i] for i in rows]) if ids is None else ids[rows.start : rows.stop]
        )
        parts = [batch.windows(k) for k in (index.n, *index.short_lengths)]
        hashes, docs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        # Screen against all sets at once: hits are rare, so the per-set work runs on a handful.
        hit = index.screen(hashes)
        hashes, docs = _unique_pairs(hashes[hit], docs[hit])
        overlap = np.zeros((len(names), len(rows)), dtype=np.int64)
        for s, name in enumerate(names):
            overlap[s] = np.bincount(docs[_member(hashes, index.grams[name])], minlength=len(rows))
        best = overlap.argmax(axis=0)  # first maximum: the earliest set wins ties
        for j in np.flatnonzero(overlap.max(axis=0) >= cfg.min_overlap):
            result[rows.start + int(j)] = names[best[j]]
    return result


def _check_index_matches(index: EvalIndex, cfg: DecontamConfig) -> None:
    """An index built with other settings would silently ignore the config's: refuse it."""
    for key, built in (
        ("ngram", index.n),
        ("min_item_tokens", index.min_item_tokens),
        ("boilerplate_min_items", index.boilerplate_min_items),
    ):
        if getattr(cfg, key) != built:
            raise ConfigError(
                f"{DECONTAM_KEY}.{key} is {getattr(cfg, key)} but the eval index was built with {built}"
            )


def _member(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """values in table (sorted, unique), as a boolean mask; a binary search per value."""
    if len(table) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return table[pos] == values


def decontaminate(texts: list[str], index: EvalIndex, cfg: DecontamConfig) -> tuple[list[int], Counter]:
    """Kept indices, and the number of texts dropped per eval-set name."""
    hits = contamination(texts, index, cfg)
    return [i for i, hit in enumerate(hits) if hit is None], Counter(hit for hit in hits if hit is not None)


# Fields of an SNS-Bench item that carry text a model could memorise (candidates lists are label
# vocabularies shared across items and are left out). Joined into one text per item.
_SNS_BENCH_FIELDS = ("query", "question", "sentence1", "sentence2", "content", "answer")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read eval set ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def _records(path: Path) -> list[dict]:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects")
    return data


def eval_texts_from_sns_bench(folder: str | Path) -> dict[str, list[str]]:
    """{"sns_bench/<task file stem>": one text per test item (its text fields and answer joined)}."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: not a folder of SNS-Bench *.json task files")
    out = {}
    for path in files:
        out[f"sns_bench/{path.stem}"] = [
            "\n".join(str(rec[f]) for f in _SNS_BENCH_FIELDS if rec.get(f) not in (None, ""))
            for rec in _records(path)
        ]
    return out


def eval_texts_from_transbench(path: str | Path) -> dict[str, list[str]]:
    """{"sns_transbench/<file stem>": the en and the zh side of every pair, as separate texts}."""
    path = Path(path)
    texts = []
    for line, rec in enumerate(_records(path), start=1):
        if not isinstance(rec.get("en"), str) or not isinstance(rec.get("zh"), str):
            raise DataError(f"{path}: record {line} has no 'en'/'zh' strings")
        texts += [rec["en"], rec["zh"]]
    return {f"sns_transbench/{path.stem}": texts}


def eval_texts_from_jsonl(path: str | Path) -> dict[str, list[str]]:
    """{"<file stem>": the "text" field of each line} for user eval sets."""
    path = Path(path)
    texts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read eval set ({err.strerror})") from err
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{path}:{lineno}: expected an object with a 'text' string")
        texts.append(rec["text"])
    return {path.stem: texts}


def eval_texts_from_path(path: str | Path) -> dict[str, list[str]]:
    """Dispatch on the path: folder -> SNS-Bench, .json -> SNS-TransBench, .jsonl -> {"text": ...}."""
    path = Path(path)
    if path.is_dir():
        return eval_texts_from_sns_bench(path)
    if path.suffix == ".json":
        return eval_texts_from_transbench(path)
    if path.suffix == ".jsonl":
        return eval_texts_from_jsonl(path)
    raise ConfigError(
        f"{DECONTAM_KEY}.eval_sets has {str(path)!r}: expected an SNS-Bench test folder, a TransBench .json or a .jsonl"
    )


def load_eval_index(cfg: DecontamConfig) -> EvalIndex:
    """Read every path in ``cfg.eval_sets`` and index it."""
    if not cfg.eval_sets:
        raise ConfigError(f"{DECONTAM_KEY}.eval_sets is empty: list the eval sets to decontaminate against")
    eval_texts: dict[str, list[str]] = {}
    for path in cfg.eval_sets:
        for name, texts in eval_texts_from_path(path).items():
            if name in eval_texts:
                raise ConfigError(f"{DECONTAM_KEY}.eval_sets has two sets named {name!r}")
            eval_texts[name] = texts
    return build_eval_index(
        eval_texts,
        cfg.ngram,
        min_item_tokens=cfg.min_item_tokens,
        boilerplate_min_items=cfg.boilerplate_min_items,
    )


# ---------------------------------------------------------------------------------------------
# curate(): filter -> dedup -> decontaminate, with a report that adds up
# ---------------------------------------------------------------------------------------------


@dataclass
class CurationReport:
    """What ``curate`` kept and why it dropped the rest.

    ``sources[name]`` = {"docs_in", "kept", "chars_in", "chars_out", "dropped": {reason: n}} with
    reasons "filter:<name>", "dedup:exact", "dedup:near", "decontam:<eval set>"; ``total`` is the
    same over all sources. Invariant: docs_in == kept + sum(dropped.values()) per source.
    """

    kept: list[int]
    sources: dict[str, dict]
    total: dict
    top_clusters: list[dict]

    def to_dict(self) -> dict:
        return {"sources": self.sources, "total": self.total, "top_clusters": self.top_clusters}


def _sample(text: str, width: int = 80) -> str:
    flat = " ".join(text.split()) or "(blank)"
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _tally(texts: list[str], sources: list[str], indices: list[int] | range, reasons: dict[int, str]) -> dict:
    stats = {"docs_in": 0, "kept": 0, "chars_in": 0, "chars_out": 0, "dropped": Counter()}
    for i in indices:
        stats["docs_in"] += 1
        stats["chars_in"] += len(texts[i])
        if i in reasons:
            stats["dropped"][reasons[i]] += 1
        else:
            stats["kept"] += 1
            stats["chars_out"] += len(texts[i])
    stats["dropped"] = dict(sorted(stats["dropped"].items(), key=lambda kv: _reason_order(kv[0])))
    return stats


def _reason_order(reason: str) -> tuple:
    stage, _, name = reason.partition(":")
    stage_rank = {"filter": 0, "dedup": 1, "decontam": 2}[stage]
    name_rank = FILTER_NAMES.index(name) if stage == "filter" else 0
    return stage_rank, name_rank, name


def curate(
    texts: list[str],
    sources: list[str],
    filters: FilterConfig | None,
    dedup_cfg: DedupConfig | None,
    decontam_cfg: DecontamConfig | None,
    eval_index: EvalIndex | None = None,
    *,
    top_clusters: int = 5,
) -> CurationReport:
    """Filter, then dedup the survivors (across sources, first occurrence kept), then drop the
    survivors that overlap an eval set. A None config skips its stage; with a DecontamConfig but
    no ``eval_index`` the index is built from ``decontam_cfg.eval_sets``."""
    if len(texts) != len(sources):
        raise RedoneError(f"curate() got {len(texts)} texts but {len(sources)} source names")
    reasons: dict[int, str] = {}
    alive = list(range(len(texts)))
    if filters is not None:
        for i, reason in zip(alive, filter_reasons(texts, filters)):
            if reason is not None:
                reasons[i] = f"filter:{reason}"
        alive = [i for i in alive if i not in reasons]
    clusters: list[list[int]] = []
    # Tokenised once for both later stages (each would otherwise tokenise every document).
    ids = dict(zip(alive, token_ids([texts[i] for i in alive]))) if dedup_cfg or decontam_cfg else {}
    if dedup_cfg is not None:
        result = dedup([texts[i] for i in alive], dedup_cfg, ids=[ids[i] for i in alive])
        for sub, kind in result.dropped.items():
            reasons[alive[sub]] = f"dedup:{kind}"
        clusters = [[alive[sub] for sub in cluster] for cluster in result.clusters]
        alive = [alive[sub] for sub in result.kept]
    if decontam_cfg is not None:
        index = eval_index if eval_index is not None else load_eval_index(decontam_cfg)
        hits = contamination([texts[i] for i in alive], index, decontam_cfg, ids=[ids[i] for i in alive])
        for i, hit in zip(alive, hits):
            if hit is not None:
                reasons[i] = f"decontam:{hit}"
        alive = [i for i in alive if i not in reasons]

    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source, []).append(i)
    clusters.sort(key=lambda c: (-len(c), c[0]))
    return CurationReport(
        kept=alive,
        sources={name: _tally(texts, sources, idx, reasons) for name, idx in by_source.items()},
        total=_tally(texts, sources, range(len(texts)), reasons),
        top_clusters=[
            {
                "size": len(cluster),
                "kept": cluster[0],
                "sources": dict(Counter(sources[i] for i in cluster)),
                "samples": [_sample(texts[i]) for i in cluster[:3]],
            }
            for cluster in clusters[:top_clusters]
        ],
    )


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_report(report: CurationReport) -> str:
    """The report as a console table: one row per count/reason, one column per source + total."""
    columns = {**report.sources, "total": report.total}
    reasons = sorted({r for stats in columns.values() for r in stats["dropped"]}, key=_reason_order)
    rows = [("docs in", [str(s["docs_in"]) for s in columns.values()])]
    rows += [(f"  - {r}", [str(s["dropped"].get(r, 0)) for s in columns.values()]) for r in reasons]
    rows += [
        ("kept", [str(s["kept"]) for s in columns.values()]),
        (
            "kept %",
            [f"{100 * s['kept'] / s['docs_in']:.1f}" if s["docs_in"] else "-" for s in columns.values()],
        ),
        ("chars in", [_human(s["chars_in"]) for s in columns.values()]),
        ("chars out", [_human(s["chars_out"]) for s in columns.values()]),
    ]
    label_w = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(cells[c]) for _, cells in rows)) for c, name in enumerate(columns)]
    lines = ["".ljust(label_w) + "  " + "  ".join(name.rjust(w) for name, w in zip(columns, widths))]
    lines += [
        label.ljust(label_w) + "  " + "  ".join(v.rjust(w) for v, w in zip(cells, widths))
        for label, cells in rows
    ]
    if report.top_clusters:
        lines.append("")
        lines.append("top duplicate clusters:")
        for cluster in report.top_clusters:
            origin = ", ".join(f"{s} x{n}" for s, n in cluster["sources"].items())
            lines.append(f"  {cluster['size']} docs ({origin}): {cluster['samples'][0]}")
            lines += [f"      ~ {sample}" for sample in cluster["samples"][1:]]
    return "\n".join(lines)
