"""Typed config schema: one dataclass per section, one top-level class per stage.

Every key a user can write is a field here; anything else is rejected with a did-you-mean
(see ``redone.config.load``). Defaults are the laptop-CPU demo's values, not a cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class LoraSection:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class ModelSection:
    # A local HF dir, a hub id, or the built-in "smollm2-135m-instruct".
    name_or_path: str = "smollm2-135m-instruct"
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # Liger Triton kernels (RMSNorm, RoPE, SwiGLU) on CUDA; needs `pip install liger-kernel`, raises otherwise.
    liger_kernels: bool = False
    # Partial fine-tuning: freeze the embeddings and the bottom N decoder layers. Backward then stops at
    # the first trainable layer, which on a CPU buys ~1.5-2x more steps per minute.
    freeze_bottom_layers: int = 0
    lora: LoraSection = field(default_factory=LoraSection)


@dataclass
class SourceSection:
    path: str = MISSING
    name: str = ""  # defaults to the file stem
    # auto | text | jsonl | json | parquet | hub | sns_bench | transbench | chat | hh_rlhf | preference
    format: str = "auto"
    text_field: str = "text"  # the text field of json/jsonl/parquet/hub records (cpt)
    text_fields: list[str] = field(default_factory=list)  # cpt: several fields joined by a blank line
    weight: float = 1.0
    split: str = "train"  # hub datasets
    text_unit: str = "paragraph"  # .txt files: paragraph | line | file
    limit: Optional[int] = None  # keep only the first N records
    tasks: list[str] = field(default_factory=list)  # sns_bench: which task files (empty = all)


@dataclass
class DataSection:
    sources: list[SourceSection] = field(default_factory=list)
    mixing: str = "ratio"  # ratio (source weights) | temperature (p ~ n^(1/T), n = tokens)
    # temperature mode: over all components; ratio mode (SFT/DPO): how a source's weight is split over
    # its components (task files), by size^(1/T)
    temperature: float = 1.0
    seq_len: int = 512
    packing: bool = True
    num_proc: int = 1
    cache_dir: Optional[str] = None  # default: $REDONE_HOME/data_cache


# The quality filters, in the order they run (the first failing one is a document's single drop reason).
FILTER_NAMES = ("too_short", "too_long", "url_only", "hashtag_only", "symbol_ratio", "repeated_lines",
                "ngram_repetition", "script")
SCRIPTS = ("any", "latin", "cjk", "mixed")


@dataclass
class QualityFilters:
    """``data.quality.filters``: thresholds of the quality filters (definitions: redone/data/filters.py)."""

    min_chars: int = 20  # of weighted_length(): CJK characters count twice, so 10 Chinese characters pass
    max_chars: int = 100_000
    max_symbol_ratio: float = 0.3  # symbols / non-space chars; emoji are text, not symbols
    max_repeated_line_ratio: float = 0.3  # duplicate lines / lines, over lines that contain a word
    max_ngram_repetition: float = 0.2  # share of token chars covered by the most repeated n-gram
    ngram_repetition_n: int = 3
    script: str = "any"  # any | latin | cjk | mixed (= latin + cjk), measured over letters
    min_script_share: float = 0.0
    drop_url_only: bool = True
    drop_hashtag_only: bool = True
    # Filters that run, by name (null = every one switched on; [] = none): see FILTER_NAMES.
    enabled: Optional[list[str]] = None


@dataclass
class QualityDedup:
    """``data.quality.dedup``: exact and near-duplicate removal, global across sources (redone/data/dedup.py)."""

    exact: bool = True  # normalised-text hash
    near: bool = True  # MinHash-LSH
    threshold: float = 0.8  # estimated Jaccard similarity of shingle sets at which docs are near dups
    num_perm: int = 128
    # wordN: N consecutive tokens (so N characters of CJK text) | charN: N chars of normalised text.
    shingle: str = "word3"
    seed: int = 0


@dataclass
class QualityDecontam:
    """``data.quality.decontam``: drop training texts that share n-grams with eval sets (redone/data/decontam.py)."""

    ngram: int = 13  # tokens: 13 words of Latin text, 13 characters of CJK text
    min_overlap: int = 1  # distinct eval n-grams a text must contain to count as contaminated
    # Eval items with fewer tokens than ``ngram`` are indexed whole (one n-gram of their own length);
    # items shorter than this are skipped: "Yes" or "Travel" would match half the corpus.
    min_item_tokens: int = 8
    # n-grams found in at least this many distinct items of one eval set (near-duplicate items
    # count once) belong to no single item: the benchmark's prompt template ("Please provide a list
    # of words you think are suitable ...", in variants) rather than item content. They are not
    # indexed, or every training text built from the same template would be dropped. 0 = keep all.
    boilerplate_min_items: int = 2
    # SNS-Bench test folders, TransBench .json files, .jsonl files with a "text" field; relative paths
    # are relative to the working dir. [] turns decontamination off.
    eval_sets: list[str] = field(default_factory=lambda: ["data/sns_bench/test", "data/sns_transbench/test.json"])


@dataclass
class QualitySection:
    """``data.quality``: CPT curation (filters -> dedup -> decontamination), see redone/data/curate.py."""

    enabled: bool = True
    filters: QualityFilters = field(default_factory=QualityFilters)
    dedup: QualityDedup = field(default_factory=QualityDedup)
    decontam: QualityDecontam = field(default_factory=QualityDecontam)


@dataclass
class CPTData(DataSection):
    cross_document_attention: bool = False  # False: position_ids restart per document (masked)
    append_eos: bool = True
    eval_holdout: int = 0  # documents per source held out (never trained on) for eval_loss/<source>
    quality: QualitySection = field(default_factory=QualitySection)


@dataclass
class SFTData(DataSection):
    loss_on: str = "assistant"  # assistant | all
    overlong: str = "truncate_prompt"  # truncate_prompt | drop | error
    # SNS task prompts: redone | official (the SNS-Bench / OpenCompass wording) | mixed (each item gets the
    # official prompt with probability official_share, decided by a hash of the component, item and seed,
    # so skill trained on one wording transfers to the other).
    prompt_style: str = "redone"
    official_share: float = 0.5
    eval_holdout: int = 0  # examples per task held out for the per-task eval loss
    # Clip long note fields (head 2/3 + tail 1/3) before templating; eval uses the same limit.
    max_prompt_chars: Optional[int] = None
    # Training examples sharing an n-gram with an eval set are dropped (counted per component and eval set),
    # with the same rules as CPT's data.quality.decontam; eval_sets: [] turns it off.
    decontam: QualityDecontam = field(default_factory=QualityDecontam)


@dataclass
class DPOData(SFTData):
    build_from_tasks: bool = True  # SNS task sources become (gold, plausible wrong) pairs
    pairs_per_item: int = 1
    # A bad pair (missing field, identical chosen/rejected, empty completion): drop (counted) | error.
    # Over-long pairs follow data.overlong (seq_len bounds each sequence: prompt + chosen, prompt + rejected).
    bad_pairs: str = "drop"
    # Also sample rejected answers from the starting model for SNS task items, kept where the benchmark
    # metric scores them below the gold answer (0 = off; N = samples tried per item).
    sample_rejected: int = 0
    sample_max_new_tokens: int = 32


@dataclass
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # AdamW kernel: fused (one kernel per group, CPU and CUDA; HF Trainer/TRL's default) | foreach | loop
    implementation: str = "fused"


@dataclass
class TrainSection:
    max_steps: int = 100
    micro_batch_size: int = 4  # rows (cpt/sft) or pairs (dpo) per process per micro-batch
    grad_accum: int = 1
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (autocast over fp32 weights) | bf16-master (bf16
    # weights and gradients, fp32 master weights + AdamW state in the optimizer; single process / DDP)
    precision: str = "auto"
    log_every: int = 10
    save_every: int = 100
    keep_last: int = 2
    eval_every: int = 0
    resume: Any = "auto"  # auto | false | PATH to a step dir
    force_resume: bool = False  # resume even when the data order changed
    # Stop this invocation after N steps (time-boxed or preemptible jobs); the schedule still spans
    # max_steps and the run resumes from the checkpoint written at the stop.
    stop_after_steps: Optional[int] = None
    threads: Optional[int] = None  # torch CPU threads (None = torch default)
    progress: bool = True


@dataclass
class TrackingSection:
    report_to: list[str] = field(default_factory=list)  # wandb | tensorboard
    project: str = "redone"
    run_name: Optional[str] = None
    wandb_mode: str = "offline"  # offline | online | disabled


@dataclass
class DPOSection:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid | ipo
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    reference_model: Optional[str] = None  # None: the starting policy is the reference
    # Chosen and rejected share one copy of the prompt in the packed row (a custom attention mask keeps
    # them apart): the prompt's forward/backward runs once per pair. None = wherever possible (packed
    # rows under sdpa), true = required (refused otherwise), false = two full sequences per pair.
    share_prompt: Optional[bool] = None


@dataclass
class RunConfig:
    stage: str = MISSING
    output_dir: str = MISSING
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)


@dataclass
class CPTConfig(RunConfig):
    stage: str = "cpt"
    data: CPTData = field(default_factory=CPTData)


@dataclass
class SFTConfig(RunConfig):
    stage: str = "sft"
    data: SFTData = field(default_factory=SFTData)


@dataclass
class DPOConfig(RunConfig):
    stage: str = "dpo"
    data: DPOData = field(default_factory=DPOData)
    dpo: DPOSection = field(default_factory=DPOSection)



# ---------------------------------------------------------------- evaluation and the pipeline

BENCHES = ("sns-bench", "sns-transbench", "general-ppl", "preference", "lm-eval")
DEFAULT_BENCHES = ("sns-bench", "sns-transbench", "general-ppl")
SKILL_FREE_BENCHES = ("sns-bench", "sns-transbench")
SUBSETS = ("first", "spread")
SCORING_MODES = ("fixed", "official")
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("hf", "vllm")


@dataclass
class EvalConfig:
    """One evaluation run: ``redone eval`` flags, a config file's ``eval:`` section, the pipeline's eval.

    Checked by ``redone.config.validate.check_eval``; run by ``redone.eval.runner.run_eval``.
    """

    benches: list[str] = field(default_factory=list)  # empty: DEFAULT_BENCHES (SKILL_FREE_BENCHES with skill_free)
    data_dir: Optional[str] = None  # folder holding sns_bench/, sns_transbench/, general/, preference/
    split: str = "test"
    files: list[str] = field(default_factory=list)  # SNS-Bench files to run; empty: all 12
    limit: Optional[int] = None  # N items per SNS-Bench file and per TransBench direction (None: all)
    subset: str = "first"  # which N: "first" or "spread" (evenly spaced through the file)
    out: Optional[str] = None  # result JSON; predictions JSONL and Markdown table go next to it
    prompt_style: str = "redone"  # redone | official (the SNS-Bench / OpenCompass prompts)
    max_prompt_chars: Optional[int] = None  # clip long note fields like SFT's data.max_prompt_chars
    # fixed: our documented corrections | official: the OpenCompass SNS-Bench scorer, quirks included.
    # The other mode's average is reported too.
    scoring_mode: str = "fixed"
    batch_size: int = 8
    max_new_tokens_cap: Optional[int] = 256  # None or 0: each task's full budget
    skill_free: bool = False  # score the skill-free baseline (perfect formats, no skill) instead of a model
    embedder: str = "auto"  # QueryGen: "auto" (bundled all-MiniLM-L6-v2 if installed) | "none" (ANLS only)
    dtype: str = "float32"  # every column of a comparison must use the same one (bf16 changes answers)
    attn_implementation: str = "auto"
    backend: str = "hf"  # hf | vllm
    device: str = "auto"  # auto: cuda when available, else cpu
    ppl_max_tokens: int = 16384
    ppl_context: int = 1024
    pref_pairs: int = 256  # the preference bench: HH-RLHF test pairs, and as many SNS test pairs
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: Optional[int] = None
    progress: bool = True
    label: Optional[str] = None  # column name in compare tables; default: the model's folder name


@dataclass
class PipelineEvalConfig(EvalConfig):
    """The pipeline's ``eval:`` section: one EvalConfig for every column, plus which columns."""

    enabled: bool = True
    models: list[str] = field(default_factory=list)  # "base" and stage names; empty: base + every stage
    skill_free: bool = True  # the pipeline adds the skill-free baseline as a column
    # Prompt styles evaluated besides prompt_style, for every model column (a second table each): e.g.
    # [official] scores every stage with the SNS-Bench/OpenCompass prompts too, the paper's protocol.
    extra_prompt_styles: list[str] = field(default_factory=list)
    # max_prompt_chars unset: the SFT stage's data.max_prompt_chars (eval prompts shaped like training's)


@dataclass
class AblationConfig:
    """``ablations:``: extra recipes trained and evaluated beside the main chain (``--ablations`` turns it on).

    A row names a chain of this pipeline's stages in order, joined by "-" ("sft", "cpt-sft", "sft-dpo").
    Empty ``rows``: every ordered subset of the stages that contains sft (the paper's rows: SFT only,
    CPT->SFT, SFT->DPO, CPT->SFT->DPO). A stage output whose lineage already matches (same config, same
    starting weights) is reused, so the main chain's stages are never trained twice.
    """

    enabled: bool = False
    rows: list[str] = field(default_factory=list)
    reference: str = "sft"  # the row every other row's SNS-Bench delta is measured against
    bootstrap: int = 1000  # paired-bootstrap resamples for the 95% interval of each delta (0: none)


@dataclass
class PipelineConfig:
    """``redone pipeline``: shared settings, one section per stage (any stage key), and ``eval``."""

    output_root: str = "runs/pipeline"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["cpt", "sft", "dpo"])
    # Delete a stage's step checkpoints once its final/ is written: resume only needs them while the
    # stage is unfinished, and each one holds the weights plus two Adam moments (3x the model).
    prune_checkpoints: bool = False
    # Where each stage trains: "auto" = a fresh child process per stage (a clean heap, and the previous
    # stage's memory handed back: redone/isolate.py), except under a multi-process launch (accelerate,
    # torchrun), where the ranks keep one process group across stages; "always" (refused under such a
    # launch) or "never" (every stage in the pipeline's own process).
    stage_processes: str = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    cpt: Any = None
    sft: Any = None
    dpo: Any = None
    rl: Any = None
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    ablations: AblationConfig = field(default_factory=AblationConfig)


# ---------------------------------------------------------------- rl (GRPO / DAPO on verifiable rewards)


@dataclass
class RLSource(SourceSection):
    # json/jsonl files of task items: the registered task (redone.sns.tasks) whose prompt builder and
    # reward they use. SNS-Bench folders and TransBench files name their tasks themselves.
    task: str = ""


@dataclass
class RLData(DataSection):
    """``data`` of the rl stage: prompts (not answers) from task sources; see redone/data/rl.py."""

    sources: list[RLSource] = field(default_factory=list)
    # redone | official | mixed (SNS task prompts, as in sft: mixed gives each item the official wording
    # with probability official_share, by a hash of the component, item and seed)
    prompt_style: str = "redone"
    official_share: float = 0.5
    max_prompt_chars: Optional[int] = None  # clip long note fields (head 2/3 + tail 1/3), as sft/eval
    # Prompts per task held out (never sampled for training) for the greedy eval_reward/<task> every
    # train.eval_every steps.
    eval_holdout: int = 0
    # A prompt whose tokens plus its answer budget exceed data.seq_len: drop (counted) | error.
    overlong: str = "drop"
    # Items sharing an n-gram with an eval set are dropped (counted per component and eval set), with the
    # same rules as sft's data.decontam; eval_sets: [] turns it off.
    decontam: QualityDecontam = field(default_factory=QualityDecontam)


@dataclass
class RLSection:
    loss_type: str = "dapo"  # grpo | dapo | dr_grpo
    group_size: int = 8  # completions sampled per prompt (advantages are normalised within a group)
    # Reward functions, summed with reward_weights (default 1 each): "task" (the SNS-Bench metric of the
    # prompt's task, per item, in [0, 1]), "format" (the answer parses in the task's protocol), or a user
    # function "module:function" (signature in redone/sns/rewards.py).
    rewards: list[str] = field(default_factory=lambda: ["task"])
    reward_weights: list[float] = field(default_factory=list)
    scale_rewards: str = "auto"  # group | batch | none | auto (none for dr_grpo, group otherwise)
    epsilon_low: float = 0.2  # clip range of the importance ratio: [1 - epsilon_low, 1 + epsilon_high]
    epsilon_high: float = 0.28
    # DAPO dynamic sampling: groups whose rewards are all equal (no signal) are dropped and the batch is
    # refilled with fresh prompts, at most max_refill_rounds extra generation rounds per batch.
    dynamic_sampling: bool = True
    max_refill_rounds: int = 2
    # Over-long answers (the task's answer budget): soft (DAPO soft punishment, linear over the last
    # overlong_buffer share of the budget, times overlong_penalty) | mask (no loss on cut answers) | none
    overlong: str = "soft"
    overlong_buffer: float = 0.25
    overlong_penalty: float = 1.0
    kl_beta: float = 0.0  # KL(policy || starting policy) weight; 0 = off (DAPO)
    updates_per_batch: int = 1  # optimizer steps per generation batch (> 1: the clip acts)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # Cap on every task's answer budget (tasks set their own: 4 tokens for Yes/No, 1024 for MRC-complex).
    max_new_tokens: Optional[int] = None
    generation_batch_size: int = 32  # sequences per generate() call
    backend: str = "auto"  # auto (vllm on CUDA when installed, else hf) | hf | vllm
    vllm_gpu_memory_utilization: float = 0.3


@dataclass
class RLConfig(RunConfig):
    stage: str = "rl"
    data: RLData = field(default_factory=RLData)
    rl: RLSection = field(default_factory=RLSection)
