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


@dataclass
class QualityFilters:
    """``data.quality.filters``: mirrors ``redone.data.quality.FilterConfig`` (definitions there)."""

    min_chars: int = 20  # CJK characters count twice
    max_chars: int = 100_000
    max_symbol_ratio: float = 0.3  # symbols / non-space chars (emoji are text, not symbols)
    max_repeated_line_ratio: float = 0.3
    max_ngram_repetition: float = 0.2  # share of token chars covered by the most repeated n-gram
    ngram_repetition_n: int = 3
    script: str = "any"  # any | latin | cjk | mixed
    min_script_share: float = 0.0
    drop_url_only: bool = True
    drop_hashtag_only: bool = True
    # Filters that run, by name (null = every one switched on; [] = none): too_short, too_long, url_only,
    # hashtag_only, symbol_ratio, repeated_lines, ngram_repetition, script.
    enabled: Optional[list[str]] = None


@dataclass
class QualityDedup:
    """``data.quality.dedup``: mirrors ``redone.data.quality.DedupConfig``; global across sources."""

    exact: bool = True  # normalised-text hash
    near: bool = True  # MinHash-LSH
    threshold: float = 0.8  # estimated Jaccard of shingle sets
    num_perm: int = 128
    shingle: str = "word3"  # wordN | charN
    seed: int = 0


@dataclass
class QualityDecontam:
    """``data.quality.decontam``: mirrors ``redone.data.quality.DecontamConfig``."""

    ngram: int = 13
    min_overlap: int = 1
    min_item_tokens: int = 8
    boilerplate_min_items: int = 2
    # SNS-Bench test folders, TransBench .json files, .jsonl files with a "text" field; relative paths
    # are relative to the working dir. [] turns decontamination off.
    eval_sets: list[str] = field(default_factory=lambda: ["data/sns_bench/test", "data/sns_transbench/test.json"])


@dataclass
class QualitySection:
    """``data.quality``: CPT curation (filters -> dedup -> decontamination), see redone/data/prepare.py."""

    enabled: bool = True
    filters: QualityFilters = field(default_factory=QualityFilters)
    dedup: QualityDedup = field(default_factory=QualityDedup)
    decontam: QualityDecontam = field(default_factory=QualityDecontam)


@dataclass
class CPTData(DataSection):
    cross_document_attention: bool = False  # False: position_ids restart per document (masked)
    append_eos: bool = True
    quality: QualitySection = field(default_factory=QualitySection)


@dataclass
class SFTData(DataSection):
    loss_on: str = "assistant"  # assistant | all
    overlong: str = "truncate_prompt"  # truncate_prompt | drop | error
    prompt_style: str = "redone"  # redone | official (SNS task prompts)
    eval_holdout: int = 0  # examples per task held out for the per-task eval loss
    # Clip long note fields (head 2/3 + tail 1/3) before templating; eval uses the same limit.
    max_prompt_chars: Optional[int] = None


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


@dataclass
class TrainSection:
    max_steps: int = 100
    micro_batch_size: int = 4  # rows (cpt/sft) or pairs (dpo) per process per micro-batch
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
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

