"""Markdown tables of eval results: one result in full, and several side by side with deltas.

Features
- ``result_markdown(result)``: the header (model, limit, prompt style, scoring mode, QueryGen mode, token
  cap, wall time, items/s), the SNS-Bench per-file table (score, success ratio, answers that hit the
  token budget, skill-free score, sub-metrics), the per-task table with the skill-free baseline beside
  it, SNS-TransBench per direction, and general perplexity. Markdown reads fine on a console too.
- ``headline_rows(result)``: the flat (name, value, higher-is-better) rows a stage-by-stage table uses:
  the 8 SNS-Bench tasks + average, TransBench BLEU/chrF++ per direction + average, perplexities.
- ``compare_markdown(results, labels)``: those rows for several results, each column after the first
  with its delta to the first; settings that differ between the results (limit, prompt style, scoring
  mode, token cap, split) are listed under the table, since such numbers are not comparable.

Used by ``redone eval`` / ``redone eval compare`` and meant for the pipeline report. Pure formatting:
no errors of its own beyond ``RedoneError`` for an empty result list or mismatched label count.
"""

from __future__ import annotations

from redone.errors import RedoneError
from redone.sns.scoring import TASKS

COMPARED_SETTINGS = ("split", "limit", "subset", "prompt_style", "max_prompt_chars", "scoring_mode", "max_new_tokens_cap",
                     "dtype", "querygen_mode")
# bf16 greedy decoding changed 15 of 48 SmolLM2 answers vs fp32: dtype is flagged like the prompt settings.
MODEL_ONLY_SETTINGS = ("prompt_style", "max_prompt_chars", "max_new_tokens_cap", "dtype")
SKILL_FREE = "skill-free"


def _num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# One result
# --------------------------------------------------------------------------------------------------


def _is_skill_free(result: dict) -> bool:
    return result.get("header", {}).get("model") == SKILL_FREE


def header_lines(result: dict) -> list[str]:
    h = result.get("header", {})
    lines = [f"# redone eval: {h.get('label')}", ""]
    model = h.get("model")
    if h.get("model_path") and h.get("model_path") != model:
        model = f"{model} ({h['model_path']})"
    lines.append(f"- model: {model}" + (f", weights fingerprint {h['fingerprint']}" if h.get("fingerprint") else ""))
    lines.append(f"- data: {h.get('data_dir')} split {h.get('split')}, {h.get('limit_note')}")
    if _is_skill_free(result):
        lines.append("- predictions: the skill-free baseline (format-perfect, no model; redone.eval.baseline)")
    else:
        clip = f"note fields clipped to {h['max_prompt_chars']} chars; " if h.get("max_prompt_chars") else ""
        lines.append(f"- prompts: {h.get('prompt_style')} style; {clip}{h.get('decoding')}; "
                     f"{h.get('max_new_tokens_note')}")
    lines.append(f"- scoring: {h.get('scoring_mode')} mode (the {h.get('other_mode')} average is listed too); "
                 f"QueryGen: {h.get('querygen_mode')}")
    run = f"- run: {h.get('wall_time_s')} s wall"
    if not _is_skill_free(result):
        run += (f", dtype {h.get('dtype')}, backend {h.get('backend')}, device {h.get('device')}, "
                f"batch {h.get('batch_size')}, torch threads {h.get('torch_threads')}")
    lines.append(run)
    for key, name in (("sns_bench", "SNS-Bench"), ("sns_transbench", "SNS-TransBench")):
        gen = (result.get(key) or {}).get("generation")
        if gen:
            lines.append(f"- {name} generation: {gen['generated']} generated + {gen['reused']} reused of "
                         f"{gen['items']} items in {gen['seconds']:.1f} s ({_num(gen['items_per_s'])} items/s, "
                         f"{_num(gen['new_tokens_per_s'], 1)} new tokens/s)")
    return lines


def _sub_metrics(metrics: dict) -> str:
    # success_* are the raw metrics times the success ratio (their mean is the score): left to the JSON.
    shown = []
    for key, value in (metrics or {}).items():
        if key.startswith("success_") or not isinstance(value, int | float):
            continue
        shown.append(f"{key} {int(value)}" if key in ("tp", "tn", "fp", "fn") else f"{key} {_num(value, 1)}")
    return ", ".join(shown)


def sns_bench_markdown(section: dict) -> str:
    """Per-file and per-task tables; the skill-free and token-budget columns only where they apply."""
    base = section.get("skill_free")
    generated = section.get("generation") is not None
    head = ["file", "n", "score", "success"] + (["hit budget/tokens"] if generated else [])
    head += (["skill-free"] if base else []) + ["sub-metrics"]
    rows = []
    for file, r in section["files"].items():
        row = [file, r["n"], _num(r["score"]), "–" if r.get("success_ratio") is None else f"{r['success_ratio']:.2f}"]
        if generated:
            row.append(f"{r.get('hit_budget', 0)}/{r.get('max_new_tokens')}")
        if base:
            row.append(_num((base["files"].get(file) or {}).get("score")))
        rows.append(row + [_sub_metrics(r.get("metrics"))])
    parts = ["## SNS-Bench", _table(head, rows)]
    task_rows = []
    for task in TASKS:
        if task in section["tasks"]:
            task_rows.append([task, _num(section["tasks"][task])] + _versus(section["tasks"][task], base, task))
    average = section.get("average")
    task_rows.append(["**average**", f"**{_num(average)}**"] + _versus(average, base, None))
    parts.append(_table(["task", "score"] + (["skill-free", "vs skill-free"] if base else []), task_rows))
    other = section.get("other_mode") or {}
    notes = [f"Average in {other.get('mode')} mode: {_num(other.get('average'))}."] if other else []
    parts.append("\n".join(f"- {n}" for n in notes + section.get("notes", [])))
    return "\n\n".join(parts)


def _versus(value, base: dict | None, task: str | None) -> list[str]:
    """[skill-free score, delta] cells, or none when there is no skill-free row."""
    if not base:
        return []
    floor = base.get("average") if task is None else base.get("tasks", {}).get(task)
    return [_num(floor), "–" if floor is None or value is None else f"{value - floor:+.2f}"]


def transbench_markdown(section: dict) -> str:
    base = section.get("skill_free")
    generated = section.get("generation") is not None
    head = ["direction", "n", "BLEU", "chrF++"] + (["hit budget/tokens"] if generated else [])
    head += ["copy-source BLEU", "copy-source chrF++"] if base else []
    rows = []
    for name in ("zh2en", "en2zh"):
        if name in section:
            r = section[name]
            row = [name, r["n"], _num(r["bleu"]), _num(r["chrf++"])]
            row += [f"{r.get('hit_budget', 0)}/{r.get('max_new_tokens')}"] if generated else []
            row += [_num(base.get(name, {}).get("bleu")), _num(base.get(name, {}).get("chrf++"))] if base else []
            rows.append(row)
    average = ["**average**", section["n"], f"**{_num(section['average'])}**", ""]
    average += [""] if generated else []
    average += [_num(base.get("average")), ""] if base else []
    rows.append(average)
    notes = ["average = mean of the 4 numbers BLEU/chrF++ × 2 directions"
             + (" (the copy-source average is in the BLEU column)" if base else "")] + section.get("notes", [])
    return "\n\n".join(["## SNS-TransBench", _table(head, rows), "\n".join(f"- {n}" for n in notes)])


def ppl_markdown(section: dict) -> str:
    rows = []
    for key, name in (("shakespeare_tail", "Shakespeare tail"), ("hh_rlhf_chosen", "HH-RLHF chosen (assistant)"),
                      ("sns_heldout_notes", "SNS held-out notes")):
        if key in section:
            r = section[key]
            rows.append([name, _num(r["ppl"], 3), _num(r["mean_nll"], 4), r["scored_tokens"], r["source"]])
    return "\n\n".join(["## Perplexity: general text and held-out SNS notes (lower is better)",
                        _table(["text", "ppl", "mean NLL", "scored tokens", "what"], rows)])


def preference_markdown(section: dict) -> str:
    rows = [[name, _num(section[key]["accuracy"]), _num(section[key]["accuracy_sum"]),
             _num(section[key]["margin"], 3), section[key]["n"]]
            for key, name in (("hh", "HH-RLHF harmless test"), ("sns", "SNS-Bench test (gold vs wrong answer)"))]
    rows.append(["mean of the two", _num(section["accuracy"]), "", "", ""])
    notes = ["right = the chosen reply has the higher mean log-probability per token (accuracy) or the higher "
             "summed log-probability (by sum); no reference model, so every column compares directly",
             "margin = mean (chosen - rejected) log-probability per token, nats"]
    return "\n\n".join(["## Held-out preference accuracy (higher is better)",
                         _table(["pairs", "accuracy", "by sum", "margin", "n"], rows),
                         "\n".join(f"- {n}" for n in notes)])


def result_markdown(result: dict) -> str:
    parts = ["\n".join(header_lines(result))]
    if "sns_bench" in result:
        parts.append(sns_bench_markdown(result["sns_bench"]))
    if "sns_transbench" in result:
        parts.append(transbench_markdown(result["sns_transbench"]))
    if "general_ppl" in result:
        parts.append(ppl_markdown(result["general_ppl"]))
    if "preference" in result:
        parts.append(preference_markdown(result["preference"]))
    if "lm_eval" in result:
        parts.append("## lm-evaluation-harness\n\n```\n" + str(result["lm_eval"].get("results")) + "\n```")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Several results
# --------------------------------------------------------------------------------------------------


def headline_rows(result: dict) -> list[tuple[str, float | None, bool]]:
    """(row name, value, higher is better) for the stage-by-stage table."""
    rows: list[tuple[str, float | None, bool]] = []
    sns = result.get("sns_bench")
    if sns:
        rows += [(f"SNS {task}", sns["tasks"].get(task), True) for task in TASKS]
        rows.append(("SNS-Bench average", sns.get("average"), True))
    trans = result.get("sns_transbench")
    if trans:
        for name in ("zh2en", "en2zh"):
            r = trans.get(name) or {}
            rows += [(f"Trans BLEU {name}", r.get("bleu"), True), (f"Trans chrF++ {name}", r.get("chrf++"), True)]
        rows.append(("SNS-TransBench average", trans.get("average"), True))
    ppl = result.get("general_ppl")
    if ppl:
        rows.append(("PPL Shakespeare tail ↓", (ppl.get("shakespeare_tail") or {}).get("ppl"), False))
        rows.append(("PPL HH-RLHF chosen ↓", (ppl.get("hh_rlhf_chosen") or {}).get("ppl"), False))
        if ppl.get("sns_heldout_notes"):
            rows.append(("PPL SNS held-out notes ↓", ppl["sns_heldout_notes"].get("ppl"), False))
    pref = result.get("preference")
    if pref:
        rows += [("Pref. accuracy HH-RLHF", pref["hh"]["accuracy"], True),
                 ("Pref. accuracy SNS", pref["sns"]["accuracy"], True),
                 ("Pref. accuracy mean", pref["accuracy"], True)]
    return rows


def compare_markdown(results: list[dict], labels: list[str] | None = None) -> str:
    """Rows = headline metrics; columns = results; later columns show their delta to the first."""
    if not results:
        raise RedoneError("compare: no results given")
    labels = labels or [r.get("header", {}).get("label") or f"#{i}" for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise RedoneError(f"compare: {len(labels)} labels for {len(results)} results")
    names: list[str] = []
    values: list[dict[str, float | None]] = []
    for result in results:
        rows = headline_rows(result)
        names += [n for n, _, _ in rows if n not in names]
        values.append({n: v for n, v, _ in rows})
    rows_out = []
    for name in names:
        first = values[0].get(name)
        cells = [_num(first)]
        for column in values[1:]:
            value = column.get(name)
            delta = "" if value is None or first is None else f" ({value - first:+.2f})"
            cells.append(_num(value) + delta)
        rows_out.append([name, *cells])
    table = _table(["metric", *labels], rows_out)
    return table + "\n" + "".join(f"\n- {n}" for n in _setting_notes(results, labels)) + "\n"


def _setting_notes(results: list[dict], labels: list[str]) -> list[str]:
    notes = [f"deltas are against the first column ({labels[0]}); ↓ marks lower-is-better rows"]
    for key in COMPARED_SETTINGS:
        # Prompts and token budgets do not exist for the skill-free baseline: don't flag them there.
        pairs = [(label, r.get("header", {}).get(key)) for label, r in zip(labels, results)
                 if not (key in MODEL_ONLY_SETTINGS and _is_skill_free(r))]
        if len({repr(value) for _, value in pairs}) > 1:
            listed = ", ".join(f"{label}={value}" for label, value in pairs)
            notes.append(f"not like for like: {key} differs ({listed})")
    return notes
