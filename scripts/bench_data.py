"""CPT data preparation throughput: ``prepare_cpt`` (read -> curate -> tokenize) with 1 and 2 processes.

Corpus: the shipped SNS text (SNS-Bench train note titles/bodies) + general text (tinyshakespeare
paragraphs), repeated until it is at least ``--mb`` MB (default 20), written as two JSONL sources.

- ``distinct``: copy 0 is the original; in copy c >= 1 every 5th word is replaced by a word drawn (seed c)
  from the corpus vocabulary. Appending a copy index would not do: near dedup (word 3-gram MinHash at
  Jaccard 0.8) would drop such copies; with every 5th word replaced only 2 in 5 word 3-grams survive, so
  copies are about 0.25 similar and are kept, and the tokenizer still sees real words.
- ``plain``: identical copies. Exact dedup drops every copy after the first, so few tokens come out:
  read its MB/s, not its tokens/s.

Each run is a fresh process with a fresh cache dir, the default ``data.quality`` (filters, exact + near
dedup, decontamination against the SNS-Bench and SNS-TransBench test sets, index build included) and
``data.num_proc`` = 1 or 2 (multi-process tokenization through ``datasets.map``; curation is one
process). tokens/s = tokens written to the cache / prepare wall time (reading + curation + tokenization);
"tokenize tok/s" = the same tokens / tokenization time only; tokens/CPU-s divides by the CPU time of the
process and its tokenizer workers, which other load on the machine disturbs less than wall time (the
1-minute load average at the start and end of each run is printed too).

Usage:
    python scripts/bench_data.py                     # 20 MB, both cases, 1 and 2 processes
    python scripts/bench_data.py --mb 5 --cases distinct --procs 1,2 --json /tmp/bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

CASES = ("distinct", "plain")
_WORD_RE = re.compile(r"\w+")


def base_documents() -> dict[str, list[str]]:
    from redone.config.schema import SourceSection
    from redone.data.sources import read_documents

    return {
        "sns": read_documents(SourceSection(path=str(common.DATA / "sns_bench" / "train"), format="sns_bench")),
        "general": read_documents(SourceSection(path=str(common.DATA / "general" / "tinyshakespeare.txt"))),
    }


def mutate(text: str, rng: random.Random, vocab: list[str], every: int = 5) -> str:
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        count += 1
        return rng.choice(vocab) if count % every == 0 else match.group()

    return _WORD_RE.sub(swap, text)


def build_corpus(case: str, mb: float, scratch: Path) -> Path:
    """Write (once) sns.jsonl + general.jsonl of at least ``mb`` MB; returns their folder."""
    folder = scratch / f"corpus-{case}-{mb:g}mb"
    if (folder / "DONE").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    docs = base_documents()
    size = sum(len(d.encode()) for ds in docs.values() for d in ds)
    copies = max(1, -(-int(mb * 1e6) // size))
    vocab = sorted({w for ds in docs.values() for d in ds for w in _WORD_RE.findall(d)})
    for name, texts in docs.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for copy in range(copies):
                rng = random.Random(copy)
                for text in texts:
                    if case == "distinct" and copy:
                        text = mutate(text, rng, vocab)
                    handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    (folder / "DONE").write_text(json.dumps({"copies": copies, "base_bytes": size}))
    return folder


def run_prepare(args) -> dict:
    from redone.data.cpt import prepare_cpt
    from redone.model import load_tokenizer
    from redone.stages import load_config

    case, procs = args.worker.rsplit("-", 1)
    folder = build_corpus(case, args.mb, Path(args.scratch))
    cache = tempfile.mkdtemp(prefix="cache-", dir=Path(args.scratch))
    sources = f"[{{name: sns, path: {folder}/sns.jsonl, weight: 3}}, {{name: general, path: {folder}/general.jsonl}}]"
    config = load_config("cpt", None, [f"output_dir={Path(args.scratch) / 'unused'}", f"model.name_or_path={args.model}",
                                       f"data.sources={sources}", f"data.cache_dir={cache}", f"data.num_proc={procs}"])
    tokenizer = load_tokenizer(args.model)
    cpu_start, load_start = cpu_seconds(), os.getloadavg()[0]
    start = time.perf_counter()
    stores, report, hit = prepare_cpt(config, tokenizer)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    assert not hit
    tokens = sum(int(s.tokens.size) for s in stores)
    total = report["curation"]["total"]
    timing = report["build_timing"]
    mb_in = sum((folder / f"{name}.jsonl").stat().st_size for name in ("sns", "general")) / 1e6
    return {"case": case, "procs": int(procs), "mb_in": mb_in,
            "docs_in": total["docs_in"], "docs_kept": total["kept"], "dropped": total["dropped"],
            "tokens": tokens, "wall_s": wall, **timing, "tokens_per_s": tokens / wall,
            "tokenize_tokens_per_s": tokens / timing["tokenize_s"], "mb_per_s": mb_in / wall,
            "cpu_s": cpu, "tokens_per_cpu_s": tokens / cpu, "load_avg": [load_start, os.getloadavg()[0]]}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the tokenizer workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size (MB of JSONL) per case")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--procs", default="1,2", help="data.num_proc values")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer to use")
    parser.add_argument("--scratch", default=str(common.SCRATCH / "data"))
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if args.worker:
        Path(args.result).write_text(json.dumps(run_prepare(args)))
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(cases) - set(CASES):
        parser.error(f"--cases: use {CASES}")
    for case in cases:
        print(f"[bench_data] building the {case} corpus (>= {args.mb:g} MB) ...", flush=True)
        build_corpus(case, args.mb, scratch)
    argv = [a for a in sys.argv[1:]]
    results = []
    for case in cases:
        for procs in [int(p) for p in args.procs.split(",")]:
            side = f"{case}-{procs}"
            print(f"[bench_data] {side} ...", flush=True)
            results.append(common.run_worker(__file__, side, argv, 2, scratch / "logs"))
            r = results[-1]
            print(f"[bench_data]   {r['tokens_per_s']:,.0f} tok/s, {r['wall_s']:.1f}s", flush=True)
    print("\n| case | procs | MB in | docs in | docs kept | tokens out | read s | curate s | tokenize s | "
          "prepare s | tokens/s | tokenize tok/s | MB/s | CPU s | tokens/CPU-s | load avg | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['procs']} | {r['mb_in']:.1f} | {r['docs_in']:,} | {r['docs_kept']:,} | "
              f"{r['tokens']:,} | {r['read_s']:.1f} | {r['curate_s']:.1f} | {r['tokenize_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['tokenize_tokens_per_s']:,.0f} | "
              f"{r['mb_per_s']:.2f} | {r['cpu_s']:.1f} | {r['tokens_per_cpu_s']:,.0f} | "
              f"{r['load_avg'][0]:.1f}-{r['load_avg'][1]:.1f} | {common.gib(r['peak_rss_bytes'])} |")
    for r in results:
        print(f"- {r['case']}-{r['procs']} drops: {r['dropped']}")
    common.save_json(args.json_out, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
