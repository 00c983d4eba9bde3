"""``curate``: quality filters -> exact/near dedup -> decontamination over all CPT documents at once,
with a ``CurationReport`` whose numbers add up per source: ``docs_in == kept + sum(every drop reason)``.

Pure Python + numpy over a list of texts (no model): filters.py, dedup.py, decontam.py do the work;
``format_report`` prints the report as a console table (reasons x sources) plus the largest duplicate
clusters.

Errors: ``RedoneError`` for mismatched inputs (texts vs sources), plus those of the steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from redone.config.schema import FILTER_NAMES, QualityDecontam, QualityDedup, QualityFilters
from redone.data.decontam import EvalIndex, contamination, load_eval_index
from redone.data.dedup import dedup
from redone.data.filters import filter_reasons
from redone.data.text import token_ids
from redone.errors import RedoneError


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
    filters: QualityFilters | None,
    dedup_cfg: QualityDedup | None,
    decontam_cfg: QualityDecontam | None,
    eval_index: EvalIndex | None = None,
    *,
    top_clusters: int = 5,
) -> CurationReport:
    """Filter, then dedup the survivors (across sources, first occurrence kept), then drop the
    survivors that overlap an eval set. A None config skips its stage; with a QualityDecontam but
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
