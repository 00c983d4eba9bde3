"""Model cards: a Hub-ready README.md in every final dir, built from its lineage (redone.json).

Features
- YAML metadata the Hugging Face Hub reads: ``base_model`` (a Hub id: the built-in's, the id a hub-loaded
  base was given, or a local base dir's ``_name_or_path`` when that is one; otherwise left out and the card
  says why), ``license`` (the one the training data implies: CC BY-NC-SA 4.0 data makes the weights
  ``cc-by-nc-sa-4.0``; otherwise the base model's license when known; otherwise ``other`` with a
  ``license_name``), ``datasets`` (Hub ids of the training data that is on the Hub), ``language``,
  ``pipeline_tag``, ``library_name`` and ``tags``.
- A body with the reason for the license, the base model, every stage of the lineage chain (steps,
  tokens, loss, weights fingerprint), every dataset with its license and upstream source, the evaluation
  table when given, usage and limitations. No link is made up: redone has no public URL, so none is given.
- ``read_card(path)`` splits a card into its metadata (dict) and body; ``redone.hub`` validates both
  before a push.

Errors: ``RedoneError`` from ``read_card`` for a card without front matter or with invalid YAML
(message names file:line).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from redone.errors import RedoneError


@dataclass(frozen=True)
class DatasetInfo:
    key: str  # matched against a data source's path
    name: str
    license: str  # as the data's LICENSE.md states it
    license_id: str | None  # Hub license id, None when it has none (public domain)
    hub_id: str | None  # the same data on the Hub, None when it is not there
    url: str  # upstream source
    language: tuple[str, ...] = ("en",)


DATASETS = (
    DatasetInfo("sns_bench", "SNS-Bench (Guo et al.)", "CC BY-NC-SA 4.0", "cc-by-nc-sa-4.0", None,
                "https://github.com/HC-Guo/SNS-Bench"),
    DatasetInfo("sns_transbench", "SNS-TransBench / RedTrans-Bench (Guo et al.)", "CC BY-NC-SA 4.0",
                "cc-by-nc-sa-4.0", None, "https://github.com/HC-Guo/RedTrans", ("en", "zh")),
    DatasetInfo("preference", "Anthropic HH-RLHF harmless-base", "MIT", "mit", "Anthropic/hh-rlhf",
                "https://github.com/anthropics/hh-rlhf"),
    DatasetInfo("tinyshakespeare", "tinyshakespeare (karpathy/char-rnn)", "public domain", None,
                "karpathy/tiny_shakespeare", "https://github.com/karpathy/char-rnn"),
    DatasetInfo("self_instruct", "Self-Instruct seed tasks (Wang et al.)", "Apache-2.0", "apache-2.0", None,
                "https://github.com/yizhongw/self-instruct"),
)
NONCOMMERCIAL_SHAREALIKE = "cc-by-nc-sa-4.0"
STAGE_WORK = {"cpt": "continued pretraining on SNS text", "sft": "multi-task SFT over the SNS task families",
              "dpo": "DPO on preference pairs"}
# Built-in model names (redone.model.BUILTIN_MODELS) -> the Hub id of the weights they ship.
BUILTIN_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Licenses of base models redone knows offline (others are read from the base dir's own card).
KNOWN_BASE_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
UNKNOWN_LICENSE_NAME = "base-model-license"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_hub_id(value: object) -> bool:
    """``owner/name`` in the Hub's spelling (no local path, no URL, no '..')."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and ".." not in value


# ---------------------------------------------------------------- lineage


def lineage_chain(final_dir: Path) -> list[dict]:
    """This stage and its redone ancestors, oldest first."""
    chain, current = [], Path(final_dir)
    while (current / "redone.json").exists():
        lineage = json.loads((current / "redone.json").read_text())
        chain.insert(0, lineage)
        current = Path(lineage.get("parent_path", ""))
    return chain


def dataset_rows(sources: list[dict]) -> list[tuple[DatasetInfo, str]]:
    """(dataset, path) for each distinct dataset in a stage's data sources; unknown data keeps its path."""
    rows: dict[str, tuple[DatasetInfo, str]] = {}
    for source in sources:
        path = str(source.get("source") or source.get("path") or "")
        info = next((d for d in DATASETS if d.key in path), None)
        if info is None:
            info = DatasetInfo(path, path, "see the data's own license", None, None, "")
        rows.setdefault(info.name, (info, path))
    return list(rows.values())


def base_model(chain: list[dict]) -> tuple[str | None, str]:
    """(Hub id of the first stage's starting model or None, a sentence saying where it came from)."""
    first = chain[0]
    name, path = str(first["parent_model"]), Path(str(first.get("parent_path") or first["parent_model"]))
    if name in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[name], f"the built-in `{name}` (the weights of {BUILTIN_HUB_IDS[name]})"
    builtin = _builtin_name(path)
    if builtin:
        return BUILTIN_HUB_IDS[builtin], f"the built-in `{builtin}` (the weights of {BUILTIN_HUB_IDS[builtin]})"
    if not path.expanduser().exists():
        if is_hub_id(name):
            return name, f"{name} from the Hugging Face Hub"
        return None, f"`{name}`, which is not a Hub id"
    declared = _declared_hub_id(path)
    if declared:
        return declared, f"a local copy of {declared} (`{name}`)"
    return None, (f"the local model dir `{name}`, whose config.json names no Hub id, so the card "
                  "declares no `base_model`")


def _builtin_name(path: Path) -> str | None:
    from redone.model import redone_home

    try:
        if path.expanduser().resolve().parent == (redone_home() / "models").resolve():
            return path.name if path.name in BUILTIN_HUB_IDS else None
    except OSError:
        return None
    return None


def _declared_hub_id(model_dir: Path) -> str | None:
    config = model_dir / "config.json"
    if not config.exists():
        return None
    value = json.loads(config.read_text()).get("_name_or_path")
    return value if is_hub_id(value) and not Path(value).exists() else None


def _base_license(base_id: str | None, chain: list[dict]) -> str | None:
    if base_id in KNOWN_BASE_LICENSES:
        return KNOWN_BASE_LICENSES[base_id]
    base_card = Path(str(chain[0].get("parent_path") or "")) / "README.md"
    if base_card.is_file():
        try:
            value = read_card(base_card)[0].get("license")
        except RedoneError:
            return None
        return value if isinstance(value, str) and value != "other" else None
    return None


def license_metadata(datasets: list[DatasetInfo], base_id: str | None, chain: list[dict]) -> tuple[dict, str]:
    """(license fields for the front matter, the sentence that gives the reason)."""
    base_license = _base_license(base_id, chain)
    restricted = [d.name for d in datasets if d.license_id == NONCOMMERCIAL_SHAREALIKE]
    if restricted:
        reason = (f"The weights are licensed CC BY-NC-SA 4.0 because they were trained on {', '.join(restricted)}, "
                  "released under CC BY-NC-SA 4.0: a model trained on it may not be used commercially without "
                  "the data authors' permission, and what is built from it must carry the same license.")
        if base_license and base_license != NONCOMMERCIAL_SHAREALIKE:
            reason += f" The base model's own license ({base_license}) applies too."
        return {"license": NONCOMMERCIAL_SHAREALIKE}, reason
    if base_license:
        return {"license": base_license}, (f"The weights keep the base model's license ({base_license}); "
                                           "no training data adds a stricter one.")
    return ({"license": "other", "license_name": UNKNOWN_LICENSE_NAME},
            "The base model's license is not known to redone: the weights carry whatever terms it has.")


# ---------------------------------------------------------------- the card


def model_card(final_dir: str | Path, eval_table: str | None = None) -> str:
    chain = lineage_chain(Path(final_dir))
    lineage = chain[-1]
    base_id, base_text = base_model(chain)
    rows = sorted({(info.name, path): info for stage in chain
                   for info, path in dataset_rows(stage.get("data_sources", []))}.items())
    datasets = list({info.name: info for _, info in rows}.values())
    license_fields, license_reason = license_metadata(datasets, base_id, chain)
    stages = " → ".join(s["stage"].upper() for s in chain)
    metadata = _metadata(base_id, license_fields, datasets, chain)
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {Path(final_dir).parent.name}: {stages} of {base_id or chain[0]['parent_model']}", "",
             "Trained with redone following the RedOne recipe (arXiv 2507.10605): "
             + ", then ".join(STAGE_WORK.get(s["stage"], s["stage"]) for s in chain) + ".", "",
             f"Base model: {base_text}.", "", "## License", "", license_reason]
    unknown = [info.name for info in datasets if info.license_id is None and not info.hub_id and not info.url]
    if unknown:
        lines.append(f"The license of {', '.join(f'`{u}`' for u in unknown)} is not known to redone; its terms "
                     "may apply to the weights as well.")
    lines += _stage_table(chain) + _dataset_table(rows)
    if eval_table:
        lines += ["", "## Evaluation", "", eval_table]
    lines += _usage() + _limitations(datasets)
    lines += ["", f"redone {lineage.get('redone_version')} · config hash `{lineage.get('config_hash')}`", ""]
    return "\n".join(lines)


def _metadata(base_id: str | None, license_fields: dict, datasets: list[DatasetInfo], chain: list[dict]) -> dict:
    metadata: dict = {}
    if base_id:
        metadata["base_model"] = base_id
    metadata.update(license_fields)
    metadata["datasets"] = sorted({d.hub_id for d in datasets if d.hub_id})
    metadata["language"] = sorted({lang for d in datasets for lang in d.language}) or ["en"]
    metadata["pipeline_tag"] = "text-generation"
    metadata["library_name"] = "transformers"
    metadata["tags"] = ["redone", "sns"] + [s["stage"] for s in chain]
    return metadata


def _stage_table(chain: list[dict]) -> list[str]:
    lines = ["", "## Training stages", "", "| stage | started from | steps | tokens | final loss | weights fingerprint |",
             "|---|---|---|---|---|---|"]
    for stage in chain:
        loss = stage.get("final_metrics", {}).get("loss")
        lines.append(f"| {stage['stage']} | {stage['parent_model']} | {stage['steps']} | {stage['tokens_seen']:,} | "
                     f"{'' if loss is None else f'{loss:.4f}'} | `{stage['fingerprint']}` |")
    return lines


def _dataset_table(rows: list[tuple[tuple[str, str], DatasetInfo]]) -> list[str]:
    lines = ["", "## Datasets", "", "| dataset | license | source | on the Hub | path used |", "|---|---|---|---|---|"]
    for (name, path), info in rows:
        lines.append(f"| {name} | {info.license} | {info.url or 'local data'} | {info.hub_id or 'no'} | `{path}` |")
    return lines


def _usage() -> list[str]:
    return ["", "## Use", "",
            "A plain transformers model dir: `AutoModelForCausalLM.from_pretrained(<this repo>)` with the chat",
            "template in `chat_template.jinja`. `redone export gguf --model <dir> --out model.gguf` makes a GGUF",
            "file for llama.cpp and Ollama; `transformers serve <dir>` gives an OpenAI-compatible server."]


def _limitations(datasets: list[DatasetInfo]) -> list[str]:
    languages = "English and Chinese" if any("zh" in d.language for d in datasets) else "English"
    lines = ["", "## Limitations", "",
             "- A small model trained briefly: it follows the SNS-Bench output formats and gains some task skill,",
             "  but it is far from a production SNS model; check the evaluation table against the skill-free row.",
             f"- Trained on {languages} data only; other languages untested."]
    if any(d.license_id == NONCOMMERCIAL_SHAREALIKE for d in datasets):
        lines.append("- Trained on CC BY-NC-SA 4.0 data: the weights inherit non-commercial, share-alike terms.")
    return lines


def write_model_card(final_dir: str | Path, eval_table: str | None = None) -> Path:
    path = Path(final_dir) / "README.md"
    path.write_text(model_card(final_dir, eval_table))
    return path


# ---------------------------------------------------------------- reading a card


def read_card(path: str | Path) -> tuple[dict, str]:
    """(front-matter metadata, body) of a README.md card."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "---":
        raise RedoneError(f"{path}:1: the card has no YAML front matter (a first line '---')")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise RedoneError(f"{path}:1: the card's front matter is not closed by a '---' line")
    try:
        metadata = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = 2 + mark.line if mark is not None else 1
        raise RedoneError(f"{path}:{line}: invalid YAML in the card's front matter "
                          f"({getattr(err, 'problem', None) or err})") from None
    if not isinstance(metadata, dict):
        raise RedoneError(f"{path}:2: the card's front matter is not a mapping")
    return metadata, "\n".join(lines[end + 1:])
