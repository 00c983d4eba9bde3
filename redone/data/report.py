"""``redone data prepare``'s report: what a stage's data path would train on, as JSON and console tables.

``stage_report`` takes a freshly built ``StageData`` and draws the planned training units from its
drawer (train.max_steps x micro_batch_size x grad_accum rows or pairs, at most ``MAX_REPORT_ROWS``)
to measure each component's realised token share next to its planned share.
- CPT: per source documents in / dropped per filter, dedup kind and eval set / kept, tokens, planned
  and realised shares, top duplicate clusters.
- SFT/DPO: per component examples (pairs), held out, truncated, dropped, tokens, planned and realised
  shares.
The JSON goes next to (not inside) output_dir: ``redone train`` refuses a non-empty output_dir
without checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from redone.data.curate import CurationReport, format_report
from redone.data.stage_data import StageData

MAX_REPORT_ROWS = 20_000  # cap on rows (pairs) drawn to measure realised shares


def stage_report(stage: str, config, data: StageData, seconds: float) -> dict:
    """The report of one built StageData (its drawer moves: build a fresh one for training)."""
    report = dict(data.report or {"stage": stage})
    report.pop("sources", None)  # cpt: the same entries are in "components", with the shares
    report["stage"] = stage
    report["components"] = [dict(info) for info in data.components]
    report["cache_hit"] = {bool(info.get("cache_hit")) for info in data.components} == {True}
    planned = planned_rows(config)
    rows = min(planned, MAX_REPORT_ROWS)
    counts = data.drawer.draw_counts(rows)
    total = sum(counts) or 1
    for info, count in zip(report["components"], counts):
        info["realised_share"] = count / total
    report["mixture"] = {"rows_planned": planned, "rows_packed": rows, "seq_len": config.data.seq_len,
                         "mixing": config.data.mixing}
    report["seconds"] = seconds
    return json.loads(json.dumps(report, default=str))


def planned_rows(config) -> int:
    train = config.train
    return train.max_steps * train.micro_batch_size * train.grad_accum


def report_path(config, override: str | None = None) -> Path:
    """``<output_dir>.data_report.json`` (next to, not inside, output_dir: `redone train` refuses a
    non-empty output_dir without checkpoints)."""
    if override:
        return Path(override)
    out = Path(config.output_dir)
    return out.parent / f"{out.name}.data_report.json"


def write_report(path: Path, report: dict) -> None:
    """Write the JSON report atomically (temp file in the same dir, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(r[0]).ljust(widths[0])] + [str(v).rjust(w) for v, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# Count columns of the SFT/DPO component table come in this order; other integer fields a stage
# reports follow, alphabetically.
COMPONENT_COUNTS = ("examples", "pairs", "held_out", "truncated", "dropped_overlong", "dropped", "skipped")


def _count_columns(components: list[dict]) -> list[str]:
    ints = {k for c in components for k, v in c.items()
            if isinstance(v, int) and not isinstance(v, bool) and k != "tokens"}
    return [k for k in COMPONENT_COUNTS if k in ints] + sorted(ints - set(COMPONENT_COUNTS))


def format_stage_report(report: dict) -> str:
    """The report as console tables."""
    components = report["components"]
    mixture = report["mixture"]
    head = (f"data report: {report['stage']} ({'cache hit' if report.get('cache_hit') else 'built'}"
            f", {report['seconds']:.1f}s)")
    parts = [head, ""]
    if report["stage"] == "cpt":
        curation = report["curation"]
        order = [c["name"] for c in components]
        parts.append(format_report(CurationReport(kept=[], sources={n: curation["sources"][n] for n in order},
                                                  total=curation["total"],
                                                  top_clusters=curation["top_clusters"])))
        if not curation["top_clusters"]:
            parts += ["", "top duplicate clusters: none"]
        parts.append("")
        counts = [("documents", "documents"), ("tokens", "tokens")]
    else:
        counts = [(k, k) for k in _count_columns(components)] + [("tokens", "tokens")]
    header = ["source" if report["stage"] == "cpt" else "component", *[label for label, _ in counts],
              "planned", "realised"]
    rows = [[c["name"], *[str(c.get(key, "-")) for _, key in counts], _pct(c.get("planned_share")),
             _pct(c.get("realised_share"))] for c in components]
    parts.append(_table(header, rows))
    unit = "pairs" if report["stage"] == "dpo" else f"rows x {mixture['seq_len']} tokens"
    measure = "pair" if report["stage"] == "dpo" else "token"
    parts.append(f"(realised: {measure} shares of the first {mixture['rows_packed']} of "
                 f"{mixture['rows_planned']} planned {unit}, {mixture['mixing']} mixing)")
    eval_index_info = report.get("quality", {}).get("eval_index")
    if eval_index_info:
        sets = ", ".join(f"{name} ({info['items']})" for name, info in eval_index_info.items())
        parts.append(f"decontaminated against: {sets}")
    return "\n".join(parts)
