"""Golden digests of every rendered prompt and gold answer: the task table moved from code to data
(``redone/sns/builtin_tasks.yaml``) without changing a byte of what SFT trains on or evaluation asks.

Each digest covers, for every item of one shipped file in one prompt style, the SFT example
(``build_example``: system, user and assistant turns) and the item clipped to 300 characters
(``clip_item``). The values were recorded with the task table before it became data; a deliberate
prompt or gold change must update them (and say so in the commit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from redone.sns import tasks as st

DATA = Path(__file__).resolve().parents[2] / "data"
FILES = sorted((DATA / "sns_bench").glob("*/*.json")) + sorted((DATA / "sns_transbench").glob("*.json"))

GOLDEN = {
    "sns_transbench/test/official": "adee655f2fd611d9",
    "sns_transbench/test/redone": "07fe0ae446886c4d",
    "sns_transbench/train/official": "719b1ff5a4cb1a24",
    "sns_transbench/train/redone": "7837d0788f8daeb4",
    "test/Note-CHLW/official": "509948813b210d51",
    "test/Note-CHLW/redone": "90057f25dd4ce821",
    "test/Note-Gender/official": "a4e789be3f3f9634",
    "test/Note-Gender/redone": "b1793c2cb4728fae",
    "test/Note-Hashtag-multiple/official": "a4be4edb2c867687",
    "test/Note-Hashtag-multiple/redone": "2051a976bc438463",
    "test/Note-Hashtag-single/official": "d2fdb682d9db9483",
    "test/Note-Hashtag-single/redone": "da8262054571f983",
    "test/Note-MRC-complex/official": "5092c044d7620216",
    "test/Note-MRC-complex/redone": "832d6b3936ef1fb7",
    "test/Note-MRC-simple/official": "188123261abe4098",
    "test/Note-MRC-simple/redone": "394fff1180207117",
    "test/Note-NER/official": "d6db6e2ddb6116f6",
    "test/Note-NER/redone": "c1614db0177db8fe",
    "test/Note-QueryCorr-explain/official": "2e6f99d16a18ef02",
    "test/Note-QueryCorr-explain/redone": "c7e320d4d42df944",
    "test/Note-QueryCorr-topic/official": "b4df284a9158f333",
    "test/Note-QueryCorr-topic/redone": "35537afe4304e2e1",
    "test/Note-QueryGen/official": "e8f641684071b000",
    "test/Note-QueryGen/redone": "8cd374de5401f8a6",
    "test/Note-Taxonomy-multiple/official": "bf736fbaf97e40a3",
    "test/Note-Taxonomy-multiple/redone": "73ed6b255f5ec532",
    "test/Note-Taxonomy-single/official": "41a26695e4f113bc",
    "test/Note-Taxonomy-single/redone": "28c4cac078fb1df8",
    "train/Note-CHLW/official": "c01ad94d9a5528f3",
    "train/Note-CHLW/redone": "26d41c945b910486",
    "train/Note-Gender/official": "3e8b6ae5cbb6ce8e",
    "train/Note-Gender/redone": "7a9072427798c074",
    "train/Note-Hashtag-multiple/official": "f5bfcef6d92a0b7e",
    "train/Note-Hashtag-multiple/redone": "12968ef529e7682f",
    "train/Note-Hashtag-single/official": "ee4fc8a1e4250bf5",
    "train/Note-Hashtag-single/redone": "fd468a6603c07891",
    "train/Note-MRC-complex/official": "2508f79e377db469",
    "train/Note-MRC-complex/redone": "1c596dde12125614",
    "train/Note-MRC-simple/official": "367bc88de64d3e59",
    "train/Note-MRC-simple/redone": "024684dc906b5c8c",
    "train/Note-NER/official": "152b672e0712fcac",
    "train/Note-NER/redone": "88fe2a121af6da4a",
    "train/Note-QueryCorr-explain/official": "870e888935719cd5",
    "train/Note-QueryCorr-explain/redone": "5c3e47768d4a3e04",
    "train/Note-QueryCorr-topic/official": "692910100b78e962",
    "train/Note-QueryCorr-topic/redone": "a7e87f15df007cae",
    "train/Note-QueryGen/official": "681931aca145a5c4",
    "train/Note-QueryGen/redone": "a721a14e45fed4c1",
    "train/Note-Taxonomy-multiple/official": "2ec7480afe1be7cb",
    "train/Note-Taxonomy-multiple/redone": "10d13040c8e07431",
    "train/Note-Taxonomy-single/official": "4ff529a39f3d54c7",
    "train/Note-Taxonomy-single/redone": "412df496ac2b8fae",
}


def _digest(path: Path, style: str) -> str:
    h = hashlib.sha256()
    for item in st.load_items(path):
        task = st.task_for_file(path) if "sns_bench" in path.parts else st.transbench_task(item)
        for record in (st.build_example(task, item, style), st.clip_item(task, item, 300)):
            h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def test_every_shipped_file_is_covered():
    assert {f"{p.parent.name}/{p.stem}/{s}" for p in FILES for s in st.STYLES} == set(GOLDEN)


@pytest.mark.parametrize("style", st.STYLES)
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_prompts_and_golds_match_the_recorded_digest(path, style):
    assert _digest(path, style) == GOLDEN[f"{path.parent.name}/{path.stem}/{style}"]
