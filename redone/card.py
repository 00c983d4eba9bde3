"""Model cards: a Hugging Face style README.md in every final dir, from its lineage (redone.json)."""

from __future__ import annotations

import json
from pathlib import Path

DATASET_LICENSES = {
    "sns_bench": ("SNS-Bench (Guo et al.)", "CC BY-NC-SA 4.0"),
    "sns_transbench": ("SNS-TransBench / RedTrans-Bench (Guo et al.)", "CC BY-NC-SA 4.0"),
    "preference": ("Anthropic HH-RLHF harmless-base", "MIT"),
    "tinyshakespeare": ("tinyshakespeare (karpathy/char-rnn)", "public domain"),
    "self_instruct": ("Self-Instruct seed tasks (Wang et al.)", "Apache-2.0"),
}


def dataset_rows(sources: list[dict]) -> list[tuple[str, str, str]]:
    rows = {}
    for source in sources:
        path = str(source.get("source") or source.get("path") or "")
        name, license_ = next(((n, lic) for key, (n, lic) in DATASET_LICENSES.items() if key in path),
                              (path, "see the data's own license"))
        rows[name] = (name, license_, path)
    return list(rows.values())


def lineage_chain(final_dir: Path) -> list[dict]:
    """This stage and its redone ancestors, oldest first."""
    chain, current = [], Path(final_dir)
    while (current / "redone.json").exists():
        lineage = json.loads((current / "redone.json").read_text())
        chain.insert(0, lineage)
        current = Path(lineage.get("parent_path", ""))
    return chain


def model_card(final_dir: str | Path, eval_table: str | None = None) -> str:
    chain = lineage_chain(Path(final_dir))
    lineage = chain[-1]
    base = chain[0]["parent_model"]
    datasets = {row for stage in chain for row in dataset_rows(stage.get("data_sources", []))}
    noncommercial = any("NC" in lic for _, lic, _ in datasets)
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: transformers",
        "license: other" if noncommercial else "license: apache-2.0",
        "tags: [redone, sns, " + ", ".join(s["stage"] for s in chain) + "]",
        "---",
        "",
        f"# {Path(final_dir).parent.name}: {' → '.join(s['stage'].upper() for s in chain)} of {base}",
        "",
        "Trained with [redone](https://github.com/) following the RedOne recipe (arXiv 2507.10605): continued",
        "pretraining on SNS text, multi-task SFT over the SNS task families, then DPO.",
        "",
        "## Training stages",
        "",
        "| stage | started from | steps | tokens | final loss | weights fingerprint |",
        "|---|---|---|---|---|---|",
    ]
    for stage in chain:
        loss = stage.get("final_metrics", {}).get("loss")
        lines.append(f"| {stage['stage']} | {stage['parent_model']} | {stage['steps']} | {stage['tokens_seen']:,} | "
                     f"{'' if loss is None else f'{loss:.4f}'} | `{stage['fingerprint']}` |")
    lines += ["", "## Datasets", "", "| dataset | license | path |", "|---|---|---|"]
    lines += [f"| {name} | {lic} | `{path}` |" for name, lic, path in sorted(datasets)]
    if eval_table:
        lines += ["", "## Evaluation", "", eval_table]
    lines += [
        "", "## Limitations", "",
        "- A small model trained briefly: it follows the SNS-Bench output formats and gains some task skill,",
        "  but it is far from a production SNS model; check the evaluation table against the skill-free row.",
        "- Trained on English SNS-Bench data plus Chinese-English translation pairs; other languages untested.",
    ]
    if noncommercial:
        lines.append("- Trained on CC BY-NC-SA 4.0 data: the weights inherit non-commercial, share-alike terms.")
    lines += ["", f"redone {lineage.get('redone_version')} · config hash `{lineage.get('config_hash')}`", ""]
    return "\n".join(lines)


def write_model_card(final_dir: str | Path, eval_table: str | None = None) -> Path:
    path = Path(final_dir) / "README.md"
    path.write_text(model_card(final_dir, eval_table))
    return path
