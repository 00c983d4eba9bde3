"""Quality filters for CPT documents (``data.quality.filters``; values in ``QualityFilters``).

They run in this fixed order and the first one that fails is the single reason a document is dropped
(so reason counts add up): ``too_short, too_long, url_only, hashtag_only, symbol_ratio, repeated_lines,
ngram_repetition, script``. Defaults are tuned to keep emoji- and hashtag-heavy SNS notes (>= 99% of
SNS-Bench note contents survive them; see tests/data/test_filters.py).

Definitions (defaults measured on the 3,868 SNS-Bench train contents; tokens and symbols: text.py)
- length (min_chars/max_chars): characters after strip(), each CJK character counted twice.
- url_only: has a URL and no word once URLs are removed. hashtag_only: has a hashtag ("#Topic[Topic]#"
  or "#word") and no word once hashtags, [emoji codes], @mentions and URLs are removed.
- symbol_ratio: symbols / non-space characters > 0.3 (the real notes peak at 0.10).
- repeated_lines: lines repeating an earlier line / lines > 0.3, over lines that contain a word.
- ngram_repetition: share of token characters covered by the most frequent token 3-gram, counted only
  if it occurs 3+ times, on the text without SNS markup, > 0.2 (drops 0.7% of the real notes).
- script: share of letters in the wanted script (latin | cjk | mixed = either) < min_script_share.

Values are checked by ``redone.config.validate.check_quality_filters``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from redone.config.schema import FILTER_NAMES, QualityFilters
from redone.data.text import CJK_RUN_RE, LATIN_RUN_RE, count_symbols, run_chars, tokens

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


def active_filters(cfg: QualityFilters) -> list[str]:
    """The filters that run, in the fixed order of FILTER_NAMES."""
    switched_on = {"url_only": cfg.drop_url_only, "hashtag_only": cfg.drop_hashtag_only,
                   "script": cfg.script != "any"}
    return [name for name in FILTER_NAMES
            if switched_on.get(name, True) and (cfg.enabled is None or name in cfg.enabled)]


def _has_words(text: str) -> bool:
    return _WORD_CHAR_RE.search(text) is not None


@functools.lru_cache(maxsize=4)  # the filters of one document ask twice (too_short, too_long)
def weighted_length(text: str) -> int:
    """Characters after strip(), with each CJK character counted twice: a Chinese character carries
    about as much as a short English word, so a plain count would drop real Chinese comments
    ("这个软件能找女朋友吗？我喜欢胖胖的女生", 19 chars) that an English filter of the same length keeps."""
    text = text.strip()
    return len(text) + run_chars(CJK_RUN_RE, text)


def _fails_too_short(text: str, cfg: QualityFilters) -> bool:
    return weighted_length(text) < cfg.min_chars


def _fails_too_long(text: str, cfg: QualityFilters) -> bool:
    return weighted_length(text) > cfg.max_chars


def _fails_url_only(text: str, cfg: QualityFilters) -> bool:
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


def _fails_hashtag_only(text: str, cfg: QualityFilters) -> bool:
    """At least one hashtag and no word left once hashtags, [emoji codes], @mentions, URLs go."""
    stripped, n_hashtags = _strip_sns_markup(text)
    return n_hashtags > 0 and not _has_words(stripped)


def symbol_ratio(text: str) -> float:
    """Symbols / non-whitespace characters (symbol as defined in the module doc)."""
    non_space = sum(map(len, text.split()))
    return count_symbols(text) / non_space if non_space else 0.0


def _fails_symbol_ratio(text: str, cfg: QualityFilters) -> bool:
    return symbol_ratio(text) > cfg.max_symbol_ratio


def repeated_line_ratio(text: str) -> float:
    """Share of lines that repeat an earlier line. Only lines with a word count: decorative
    separator lines ("———", "🌸🌸") repeat legitimately in SNS notes."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if _has_words(line)]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def _fails_repeated_lines(text: str, cfg: QualityFilters) -> bool:
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


def _fails_ngram_repetition(text: str, cfg: QualityFilters) -> bool:
    return ngram_repetition(text, cfg.ngram_repetition_n) > cfg.max_ngram_repetition


def script_share(text: str, script: str) -> float:
    """Share of letters in the script: latin, cjk, or mixed (latin + cjk). 0.0 without letters."""
    letters = run_chars(_LETTER_RUN_RE, text)
    if not letters:
        return 0.0
    latin = run_chars(LATIN_RUN_RE, text) if script in ("latin", "mixed") else 0
    cjk = run_chars(CJK_RUN_RE, text) if script in ("cjk", "mixed") else 0
    return (latin + cjk) / letters


def _fails_script(text: str, cfg: QualityFilters) -> bool:
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


def filter_reasons(texts: list[str], cfg: QualityFilters) -> list[str | None]:
    """Per text, the name of the first filter it fails (in FILTER_NAMES order), or None if kept."""
    checks = [(name, _FILTER_FUNCS[name]) for name in active_filters(cfg)]
    reasons: list[str | None] = []
    for text in texts:
        reasons.append(next((name for name, fails in checks if fails(text, cfg)), None))
    return reasons


def apply_filters(texts: list[str], cfg: QualityFilters) -> tuple[list[int], Counter]:
    """Kept indices and drop counts by reason (the first failing filter is the reason)."""
    reasons = filter_reasons(texts, cfg)
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    return kept, Counter(reason for reason in reasons if reason is not None)
