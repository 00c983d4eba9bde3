"""Padding-free packing shared by every stage.

A tokenized source lives in a ``TokenStore``: all token ids in one int32 array, an offsets array, a
loss mask, and for items with several parts (a DPO pair's chosen and rejected) the part boundaries.
Packers draw items from the ``MixtureSampler`` and fill rows of ``seq_len`` tokens:

- ``DocumentPacker`` (cpt): a continuous stream; a document longer than what is left of a row carries
  on in the next row.
- ``ItemPacker`` (sft, dpo): whole items only; an item that doesn't fit starts the next row.

Every segment (a document piece, an example, a chosen or rejected sequence) gets ``position_ids``
restarting at 0, which is how transformers builds a per-segment causal mask (sdpa on CPU, flash-attn
varlen on GPU) with no padding inside a row. The first label of each segment is ignored so nothing is
predicted across a boundary. A row's unused tail becomes its own ignored segment.

Packer state (sampler state + the carried item) is plain JSON: resume is O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from redone.data.mixture import MixtureSampler
from redone.errors import DataError

IGNORE = -100


@dataclass
class TokenStore:
    """Tokenized items of one source. Item i spans tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, len n+1
    loss_mask: np.ndarray | None = None  # bool per token; None = every token counts
    part_offsets: np.ndarray | None = None  # per item, start of its second part (dpo rejected), relative

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[i], self.offsets[i + 1]
        ids = self.tokens[start:end]
        mask = self.loss_mask[start:end] if self.loss_mask is not None else np.ones(len(ids), dtype=bool)
        return ids, mask

    def subset(self, indices) -> TokenStore:
        """A new store with the given items, in the given order."""
        ids, masks, parts = [], [], []
        for i in indices:
            item_ids, mask = self.item(int(i))
            ids.append(item_ids.tolist())
            masks.append(mask.tolist())
            if self.part_offsets is not None:
                parts.append(int(self.part_offsets[i]))
        return TokenStore.from_lists(ids, masks if self.loss_mask is not None else None,
                                     parts if self.part_offsets is not None else None)

    @classmethod
    def from_lists(cls, ids: list[list[int]], masks: list[list[bool]] | None = None,
                   parts: list[int] | None = None) -> TokenStore:
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        tokens = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        mask = None
        if masks is not None:
            mask = np.fromiter((bool(m) for x in masks for m in x), dtype=bool, count=int(offsets[-1]))
        part_offsets = np.asarray(parts, dtype=np.int64) if parts is not None else None
        return cls(tokens, offsets, mask, part_offsets)


def split_holdout(store: TokenStore, holdout: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out item indices of a store (empty, i.e. dropped, items are in neither).

    ``holdout`` items are set aside by a permutation seeded with ``seed`` only, so the same items are
    held out whatever else changes in the config."""
    usable = np.flatnonzero(store.lengths() > 0)
    if len(usable) == 0:
        raise DataError(f"{name}: every example was dropped as over-long (raise data.seq_len)")
    order = np.random.default_rng([seed, 7]).permutation(usable)
    held = np.sort(order[:holdout]) if holdout else np.array([], dtype=np.int64)
    train = np.sort(order[holdout:])
    if len(train) == 0:
        raise DataError(f"{name}: data.eval_holdout={holdout} leaves no training examples")
    return train, held


def first_fit_decreasing(lengths: list[int], width: int) -> list[list[int]]:
    """Bins of item indices: items taken longest first, each into the first bin it fits (total <= width).

    With ``width`` = the longest item, no bin is wider than that item alone, so packing a micro-batch
    this way never adds attention cost (quadratic in a row's width) over one item per row."""
    bins: list[list[int]] = []
    used: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for j, u in enumerate(used):
            if u + lengths[k] <= width:
                bins[j].append(k)
                used[j] += lengths[k]
                break
        else:
            bins.append([k])
            used.append(lengths[k])
    return bins


@dataclass
class Segment:
    start: int  # position in the row
    length: int
    source: int
    item: int
    part: int = 0  # dpo: 0 chosen, 1 rejected


@dataclass
class Row:
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    segments: list[Segment] = field(default_factory=list)


class BatchSegment(NamedTuple):
    """One segment of a collated batch: where it sits and what it is (``batch["segments"]`` entries)."""

    row: int  # batch row
    start: int  # position in the row
    length: int
    source: int  # mixture component
    item: int  # item index in the component's store
    part: int = 0  # dpo: 0 chosen, 1 rejected


class RowBuilder:
    """Builds one packed row segment by segment (positions restart per segment unless told not to)."""

    def __init__(self, seq_len: int, restart_positions: bool):
        self.seq_len = seq_len
        self.restart = restart_positions
        self.ids: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.positions: list[np.ndarray] = []
        self.segments: list[Segment] = []
        self.used = 0

    def room(self) -> int:
        return self.seq_len - self.used

    def add(self, ids: np.ndarray, mask: np.ndarray, source: int, item: int, part: int = 0) -> None:
        labels = np.where(mask, ids, IGNORE).astype(np.int64)
        if self.restart:
            labels[0] = IGNORE  # never predict a segment's first token from the previous segment
            positions = np.arange(len(ids), dtype=np.int64)
        else:
            positions = np.arange(self.used, self.used + len(ids), dtype=np.int64)
        self.segments.append(Segment(self.used, len(ids), source, item, part))
        self.ids.append(ids.astype(np.int64))
        self.labels.append(labels)
        self.positions.append(positions)
        self.used += len(ids)

    def finish(self, pad_id: int, fill: bool) -> Row:
        if fill and self.used < self.seq_len:
            # The tail is its own segment (positions restart, labels ignored): no attention mask needed.
            n = self.seq_len - self.used
            self.ids.append(np.full(n, pad_id, dtype=np.int64))
            self.labels.append(np.full(n, IGNORE, dtype=np.int64))
            self.positions.append(np.arange(n, dtype=np.int64))
        return Row(np.concatenate(self.ids), np.concatenate(self.labels), np.concatenate(self.positions),
                   self.segments)


class DocumentPacker:
    """CPT: documents streamed into full rows; long documents continue in the next row."""

    def __init__(self, stores: list[TokenStore], sampler: MixtureSampler, seq_len: int,
                 cross_document_attention: bool = False):
        self.stores, self.sampler, self.seq_len = stores, sampler, seq_len
        self.cross_doc = cross_document_attention
        self.carry: list[int] | None = None  # [source, item, offset into the item]

    def next_row(self) -> Row:
        row = RowBuilder(self.seq_len, restart_positions=not self.cross_doc)
        while row.room() > 0:
            if self.carry is None:
                source, item = self.sampler.next()
                self.carry = [source, item, 0]
            source, item, offset = self.carry
            ids, mask = self.stores[source].item(item)
            take = min(row.room(), len(ids) - offset)
            row.add(ids[offset:offset + take], mask[offset:offset + take], source, item)
            self.carry = [source, item, offset + take] if offset + take < len(ids) else None
        return row.finish(pad_id=0, fill=False)

    def draw_counts(self, rows: int) -> list[int]:
        """Tokens per source over the next ``rows`` rows (moves the packer: use a fresh one)."""
        return _row_counts(self, rows, len(self.stores))

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "carry": self.carry}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.carry = state["carry"]


def add_item(row: RowBuilder, store: TokenStore, source: int, item: int) -> None:
    """Place an item; a two-part item (dpo pair) becomes two segments with their own positions."""
    ids, mask = store.item(item)
    if store.part_offsets is None:
        row.add(ids, mask, source, item)
        return
    cut = int(store.part_offsets[item])
    row.add(ids[:cut], mask[:cut], source, item, part=0)
    row.add(ids[cut:], mask[cut:], source, item, part=1)


def pack_in_order(store: TokenStore, source: int, seq_len: int, pad_id: int, packing: bool = True) -> list[Row]:
    """Every non-empty item of one store exactly once, in order (held-out evaluation). A single-part
    item longer than seq_len (a CPT document) is cut into seq_len pieces, each its own segment."""
    rows, row = [], RowBuilder(seq_len, restart_positions=True)
    for item in range(len(store)):
        length = int(store.offsets[item + 1] - store.offsets[item])
        if length == 0:
            continue
        pieces = [(0, length)]
        if length > seq_len and store.part_offsets is None:
            pieces = [(start, min(start + seq_len, length)) for start in range(0, length, seq_len)]
        for start, end in pieces:
            if row.segments and (end - start > row.room() or not packing):
                rows.append(row.finish(pad_id, fill=packing))
                row = RowBuilder(seq_len, restart_positions=True)
            if (start, end) == (0, length):
                add_item(row, store, source, item)
            else:
                ids, mask = store.item(item)
                row.add(ids[start:end], mask[start:end], source, item)
    if row.segments:
        rows.append(row.finish(pad_id, fill=packing))
    return rows


class ItemPacker:
    """SFT/DPO: whole items (an example, or a pair's two sequences) into rows of at most seq_len.

    Items wait in a small buffer in the order the mixture drew them; a row takes the oldest item, then
    keeps adding the oldest buffered item that still fits (first fit). The lookahead fills rows far
    better than strictly sequential packing while staying deterministic and resumable (the buffer is
    part of the state). With ``packing=False`` every row holds exactly one item (the padded path).
    """

    def __init__(self, stores: list[TokenStore], sampler: MixtureSampler, seq_len: int, pad_id: int,
                 packing: bool = True, lookahead: int = 32):
        self.stores, self.sampler, self.seq_len = stores, sampler, seq_len
        self.pad_id, self.packing = pad_id, packing
        self.lookahead = lookahead if packing else 1
        self.buffer: list[list[int]] = []  # [source, item] drawn but not yet placed, oldest first

    def _length(self, pick: list[int]) -> int:
        store = self.stores[pick[0]]
        return int(store.offsets[pick[1] + 1] - store.offsets[pick[1]])

    def next_row(self) -> Row:
        row = RowBuilder(self.seq_len, restart_positions=True)
        while True:
            while len(self.buffer) < self.lookahead:
                self.buffer.append(list(self.sampler.next()))
            fits = [i for i, pick in enumerate(self.buffer) if self._length(pick) <= row.room()]
            if not fits or (row.segments and not self.packing):
                break
            source, item = self.buffer.pop(fits[0])
            add_item(row, self.stores[source], source, item)  # items fit seq_len (checked at tokenisation)
        return row.finish(self.pad_id, fill=self.packing)

    def draw_counts(self, rows: int) -> list[int]:
        """Tokens per source over the next ``rows`` rows (moves the packer: use a fresh one)."""
        return _row_counts(self, rows, len(self.stores))

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "buffer": [list(p) for p in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.buffer = [list(p) for p in state["buffer"]]


def _row_counts(packer, rows: int, n_sources: int) -> list[int]:
    counts = [0] * n_sources
    for _ in range(rows):
        for segment in packer.next_row().segments:
            counts[segment.source] += segment.length
    return counts


def collate(rows: list[Row], pad_id: int, layout: str = "rows") -> dict:
    """Rows -> model inputs. ``segments`` are ``BatchSegment``s (batch row, start, length, source, item, part).

    - ``rows``: packed rows stack to [B, L] (per-row block masks from position_ids; attention costs
      B*L^2, which is what sdpa on CPU wants).
    - ``flat``: one [1, sum L] sequence (flash-attn varlen: no quadratic waste at all).
    - ``padded``: every segment becomes its own right-padded row with an attention mask: the classic
      unpacked batch, kept for comparison (``packing: false``).
    """
    if layout == "padded":
        return _collate_padded(rows, pad_id)
    segments = []
    if layout == "flat":
        offset = 0
        for row in rows:
            segments += [BatchSegment(0, offset + s.start, s.length, s.source, s.item, s.part) for s in row.segments]
            offset += len(row.input_ids)
        return {name: torch.from_numpy(np.concatenate([getattr(r, name) for r in rows]))[None]
                for name in ("input_ids", "labels", "position_ids")} | {"segments": segments}
    if len({len(r.input_ids) for r in rows}) != 1:
        raise ValueError("packed rows must share one length")
    for b, row in enumerate(rows):
        segments += [BatchSegment(b, s.start, s.length, s.source, s.item, s.part) for s in row.segments]
    return {name: torch.from_numpy(np.stack([getattr(r, name) for r in rows]))
            for name in ("input_ids", "labels", "position_ids")} | {"segments": segments}


def _collate_padded(rows: list[Row], pad_id: int) -> dict:
    pieces = [(row, s) for row in rows for s in row.segments]
    width = max(s.length for _, s in pieces)
    input_ids = torch.full((len(pieces), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pieces), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(pieces), width), dtype=torch.long)
    segments = []
    for b, (row, s) in enumerate(pieces):
        span = slice(s.start, s.start + s.length)
        input_ids[b, : s.length] = torch.from_numpy(row.input_ids[span])
        labels[b, : s.length] = torch.from_numpy(row.labels[span])
        attention_mask[b, : s.length] = 1
        segments.append(BatchSegment(b, 0, s.length, s.source, s.item, s.part))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "position_ids": position_ids, "segments": segments}
