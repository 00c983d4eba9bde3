"""Packed rows must give exactly the loss of the same documents run one by one."""

import numpy as np
import pytest
import torch

from redone.data.mixture import MixtureSampler
from redone.data.packing import IGNORE, DocumentPacker, ItemPacker, TokenStore, collate
from redone.train.base import token_logprobs


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from redone.model import load_model

    return load_model(str(tiny_model_dir), attn_implementation="sdpa").eval()


def docs_store(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return TokenStore.from_lists([list(rng.integers(10, 40000, size=int(rng.integers(5, 30)))) for _ in range(n)])


def per_document_nll(model, store, ids_by_doc):
    total, count = 0.0, 0
    for ids in ids_by_doc:
        x = torch.tensor(ids, dtype=torch.long)[None]
        labels = x.clone()
        batch = {"input_ids": x, "labels": labels, "position_ids": torch.arange(x.shape[1])[None]}
        logp, mask = token_logprobs(model, batch)
        total += float(-logp.sum())
        count += int(mask.sum())
    return total, count


def test_packed_cpt_loss_equals_per_document_loss(model):
    store = docs_store()
    sampler = MixtureSampler([store.lengths()], [1.0], seed=0)
    total_len = int(store.lengths().sum())
    packer = DocumentPacker([store], sampler, seq_len=total_len)  # one row holds every document once
    row = packer.next_row()
    batch = collate([row], pad_id=0)
    with torch.no_grad():
        logp, mask = token_logprobs(model, batch)
        packed = float(-logp.sum()) / int(mask.sum())
        docs = [store.item(s.item)[0] for s in row.segments]
        total, count = per_document_nll(model, store, docs)
    assert int(mask.sum()) == count == total_len - len(docs)
    assert packed == pytest.approx(total / count, abs=1e-5)


def test_cross_document_attention_changes_the_loss(model):
    store = docs_store()
    sampler = MixtureSampler([store.lengths()], [1.0], seed=0)
    row = DocumentPacker([store], sampler, seq_len=int(store.lengths().sum()),
                         cross_document_attention=True).next_row()
    assert (row.position_ids == np.arange(len(row.input_ids))).all()
    assert (row.labels != IGNORE).sum() == len(row.input_ids)


def test_documents_continue_across_rows():
    store = TokenStore.from_lists([list(range(1, 11)), list(range(11, 15))])
    sampler = MixtureSampler([store.lengths()], [1.0], seed=0)
    packer = DocumentPacker([store], sampler, seq_len=6)
    rows = [packer.next_row() for _ in range(3)]
    stream = np.concatenate([r.input_ids for r in rows])
    assert sorted(stream[:14].tolist()) == list(range(1, 15))
    assert all(len(r.input_ids) == 6 for r in rows)


def per_item_sums(batch, logp, mask):
    """item -> (sum logp, scored tokens) from segment spans (position t scores label t+1)."""
    sums = {}
    for b, start, length, _source, item, _part in batch["segments"]:
        span = slice(max(start - 1, 0), start + length - 1)
        sums.setdefault(item, (float(logp[b, span].sum()), int(mask[b, span].sum())))
    return sums


def test_item_packer_packed_equals_padded(model):
    rng = np.random.default_rng(1)
    ids = [list(rng.integers(10, 40000, size=int(n))) for n in rng.integers(6, 20, size=7)]
    masks = [[i >= len(x) // 2 for i in range(len(x))] for x in ids]  # "assistant" half carries loss
    store = TokenStore.from_lists(ids, masks)

    def run(packing, rows):
        sampler = MixtureSampler([store.lengths()], [1.0], seed=0)
        packer = ItemPacker([store], sampler, seq_len=48, pad_id=0, packing=packing)
        batch = collate([packer.next_row() for _ in range(rows)], 0, "rows" if packing else "padded")
        with torch.no_grad():
            logp, mask = token_logprobs(model, batch)
        return per_item_sums(batch, logp, mask), batch

    packed, batch = run(True, rows=4)
    padded, _ = run(False, rows=7)
    assert batch["input_ids"].shape[1] == 48 and "attention_mask" not in batch
    assert sorted(padded) == list(range(7)) and set(padded) <= set(packed)
    for item in range(7):
        assert packed[item][1] == padded[item][1] == len(ids[item]) - len(ids[item]) // 2
        assert packed[item][0] == pytest.approx(padded[item][0], abs=1e-4)
    total_packed = sum(packed[i][0] for i in range(7)) / sum(packed[i][1] for i in range(7))
    total_padded = sum(padded[i][0] for i in range(7)) / sum(padded[i][1] for i in range(7))
    assert total_packed == pytest.approx(total_padded, abs=1e-5)


def test_item_packer_state_round_trip_and_fill():
    rng = np.random.default_rng(3)
    store = TokenStore.from_lists([list(range(int(n))) for n in rng.integers(20, 120, size=200)])

    def packer():
        return ItemPacker([store], MixtureSampler([store.lengths()], [1.0], seed=4), seq_len=256, pad_id=0)

    a = packer()
    for _ in range(17):
        a.next_row()
    b = packer()
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        ra, rb = a.next_row(), b.next_row()
        assert (ra.input_ids == rb.input_ids).all() and (ra.position_ids == rb.position_ids).all()
    rows = [packer().next_row() for _ in range(1)] + [a.next_row() for _ in range(30)]
    fill = np.mean([sum(s.length for s in r.segments) / 256 for r in rows])
    assert fill > 0.9  # first-fit over the lookahead buffer keeps rows nearly full
