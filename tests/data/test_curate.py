"""curate(): filter -> dedup -> decontaminate over real data, with a report that adds up per source.

Every count is asserted exactly on crafted inputs; real data checks the defaults.
"""

from __future__ import annotations

import json

import pytest

from redone.config.schema import QualityDecontam, QualityDedup, QualityFilters
from redone.data import curate, text
from redone.errors import ConfigError, RedoneError
from tests.data.conftest import distinct_notes


def test_curate_report_adds_up(sns_notes, shakespeare, eval_texts, eval_index):
    notes = distinct_notes(sns_notes[1::2], 150)
    leak = eval_texts["sns_bench/Note-Gender"][0].split("\n", 1)[1]
    speech = next(p for p in shakespeare[30:] if len(text.tokens(p)) > 150)
    web = [
        "ok",  # filter:too_short
        "https://example.com/a/long/path/to/something",  # filter:url_only
        "#Travel[Topic]# #Xiamen[Topic]#",  # filter:hashtag_only
        notes[3].upper(),  # dedup:exact (of an sns note; the sns source comes first)
        notes[4].replace(" ", "  ") + " !!",  # dedup:exact
        shakespeare[0] + "\n" + leak,  # decontam:sns_bench/Note-Gender
        "今天我们去公园散步，天气非常好。"
        + eval_texts["sns_transbench/test"][1],  # decontam:sns_transbench/test
        speech,  # kept
        speech.replace(" the ", " a ", 2),  # dedup:near (of the speech above)
    ]
    texts = notes + web + shakespeare[2:30]
    sources = ["sns"] * len(notes) + ["web"] * len(web) + ["books"] * 28
    report = curate.curate(texts, sources, QualityFilters(), QualityDedup(), QualityDecontam(eval_sets=[]), eval_index)
    print(curate.format_report(report))

    assert report.sources["web"]["dropped"] == {
        "filter:too_short": 1,
        "filter:url_only": 1,
        "filter:hashtag_only": 1,
        "dedup:exact": 2,
        "dedup:near": 1,
        "decontam:sns_bench/Note-Gender": 1,
        "decontam:sns_transbench/test": 1,
    }
    assert report.sources["web"]["kept"] == 1
    assert report.sources["books"] == {
        "docs_in": 28,
        "kept": 28,
        "chars_in": sum(map(len, shakespeare[2:30])),
        "chars_out": sum(map(len, shakespeare[2:30])),
        "dropped": {},
    }
    for stats in [*report.sources.values(), report.total]:
        assert stats["docs_in"] == stats["kept"] + sum(stats["dropped"].values())
    assert report.total["docs_in"] == len(texts)
    assert report.total["kept"] == len(report.kept)
    assert report.total["chars_out"] == sum(len(texts[i]) for i in report.kept)
    assert report.sources["sns"]["kept"] >= 145

    clusters = report.top_clusters
    assert [c["size"] for c in clusters[:3]] == [2, 2, 2]
    assert {c["kept"] for c in clusters} >= {3, 4, len(notes) + 7}
    assert all(len(s) <= 80 for c in clusters for s in c["samples"])

    table = curate.format_report(report)
    assert "decontam:sns_bench/Note-Gender" in table and "top duplicate clusters" in table
    assert json.dumps(report.to_dict())  # serialisable for the run's report file


def test_curate_errors():
    with pytest.raises(RedoneError, match="2 texts but 1 source"):
        curate.curate(["a", "b"], ["x"], None, None, None)
    with pytest.raises(ConfigError, match=r"eval_sets is empty"):
        curate.curate(["a"], ["x"], None, None, QualityDecontam(eval_sets=[]))
