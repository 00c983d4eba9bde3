import pytest

from redone.config.schema import SourceSection
from redone.data.sources import read_documents, read_records
from redone.errors import DataError


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_jsonl_documents_and_fields(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "one"}\n\n{"text": "two", "title": "T"}\n')
    assert read_documents(SourceSection(path=path)) == ["one", "two"]
    with pytest.raises(DataError, match=r"a.jsonl:1: missing field 'title'"):
        read_documents(SourceSection(path=path, text_fields=["title", "text"]))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_records(SourceSection(path=path))


def test_non_utf8_names_line(tmp_path):
    path = write(tmp_path / "latin.txt", b"fine line\n\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin.txt:3: not valid UTF-8"):
        read_documents(SourceSection(path=path))


def test_empty_and_missing_sources(tmp_path):
    path = write(tmp_path / "empty.txt", b"\n\n  \n")
    with pytest.raises(DataError, match="is empty"):
        read_documents(SourceSection(path=path))
    with pytest.raises(DataError, match="file not found"):
        read_documents(SourceSection(path=str(tmp_path / "nope.txt")))


def test_text_units(tmp_path):
    path = write(tmp_path / "t.txt", b"a b\nc\n\nd e\n")
    assert read_documents(SourceSection(path=path)) == ["a b\nc", "d e"]
    assert read_documents(SourceSection(path=path, text_unit="line")) == ["a b", "c", "d e"]
    assert read_documents(SourceSection(path=path, text_unit="file", limit=1)) == ["a b\nc\n\nd e"]


def test_sns_bench_notes_are_deduplicated_and_answer_free():
    from tests.conftest import DATA

    docs = read_documents(SourceSection(path=str(DATA / "sns_bench" / "train"), tasks=["Note-Gender"]))
    assert len(docs) == len(set(docs)) > 50
    assert not any(d in ("Yes", "No") for d in docs)
