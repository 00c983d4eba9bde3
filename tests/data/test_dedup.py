"""Exact and near dedup: normalised variants, edited notes, first occurrence kept, datasketch-equal signatures.

Every count is asserted exactly on crafted inputs; real data checks the defaults.
"""

from __future__ import annotations

import numpy as np
import pytest

from redone.config.schema import QualityDedup
from redone.config.validate import check_quality_dedup
from redone.data import dedup, text
from redone.errors import ConfigError
from tests.data.conftest import distinct_notes, word3


def test_normalise_exact():
    assert text.normalise_exact("  Hello,   WORLD!!\n😀 don't… ") == "hello world 😀 don t"
    assert text.normalise_exact("ＦＵＬＬ　width") == "full width"  # NFKC


def test_exact_dedup_catches_case_whitespace_punctuation_variants(sns_notes):
    base = sns_notes[100:110]
    planted = [
        base[2].upper(),
        "  " + base[5].replace(" ", "   \n ") + " ",
        base[5].replace(",", "").replace("!", "?") + "...",
        base[7].lower() + "!!!",
    ]
    texts = base + planted
    result = dedup.dedup(texts, QualityDedup(near=False))
    assert (result.dropped_exact, result.dropped_near) == (4, 0)
    assert result.kept == list(range(10))
    assert result.clusters == [[2, 10], [5, 11, 12], [7, 13]]
    assert result.dropped == {10: "exact", 11: "exact", 12: "exact", 13: "exact"}


def test_near_dedup_catches_edited_note_and_keepsdistinct_notes(sns_notes):
    distinct = distinct_notes(sns_notes[::3], 200)
    assert len(distinct) == 200
    note = next(n for n in distinct if 120 <= len(text.tokens(n)) <= 300)
    words = note.split(" ")
    for i in (10, 40, 70):  # three words changed in a long real note
        words[i] = "zebra"
    edited = " ".join(words)
    assert 0.8 < len(word3(note) & word3(edited)) / len(word3(note) | word3(edited)) < 1.0
    texts = distinct + [edited]
    for shingle in ("word3", "char5"):
        result = dedup.dedup(texts, QualityDedup(shingle=shingle))
        assert (result.dropped_exact, result.dropped_near) == (0, 1), shingle
        assert result.clusters == [[distinct.index(note), 200]]
        assert result.kept == list(range(200))


def test_near_dedup_keeps_first_occurrence_and_is_deterministic(sns_notes):
    note = next(n for n in sns_notes if len(text.tokens(n)) > 150)
    copy = note.replace("the ", "a ", 2)
    texts = [copy, "a b c d e f g h", note]
    first = dedup.dedup(texts, QualityDedup(exact=False))
    assert first.kept == [0, 1]
    assert first.clusters == [[0, 2]]
    assert dedup.dedup(texts, QualityDedup(exact=False)) == first


def test_signatures_match_datasketch():
    from datasketch import MinHash

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**32, size=300, dtype=np.uint64).astype(np.uint32)
    docs = np.repeat(np.arange(3), [100, 150, 50])
    ours = dedup.minhash_signatures(hashes, docs, 3, num_perm=64, seed=7)
    for d in range(3):
        reference = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
        reference.update_batch([int(h) for h in hashes[docs == d]])
        assert np.array_equal(ours[d], reference.hashvalues)


def test_dedup_config_errors():
    with pytest.raises(ConfigError, match=r"data\.quality\.dedup\.shingle"):
        check_quality_dedup(QualityDedup(shingle="chars"))
    with pytest.raises(ConfigError, match=r"data\.quality\.dedup\.threshold"):
        check_quality_dedup(QualityDedup(threshold=0))
