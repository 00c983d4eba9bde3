"""Shared fixtures: offline env, a tiny random model with SmolLM2's tokenizer, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                     ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from redone.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from redone.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture()
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


def cpt_overrides(model_dir, out, cache, steps=6, **extra) -> list[str]:
    """A small CPT run over the shipped SNS notes + Shakespeare."""
    items = {
        "output_dir": str(out), "model.name_or_path": str(model_dir), "data.seq_len": 64,
        "data.cache_dir": cache, "train.max_steps": steps, "train.micro_batch_size": 2,
        "train.grad_accum": 2, "train.log_every": 1, "train.save_every": 3, "train.progress": "false",
        "optim.lr": 1e-3, "optim.warmup_steps": 1,
        "data.sources": (f"[{{name: sns, path: {DATA}/sns_bench/train, weight: 3, "
                         f"tasks: [Note-Taxonomy-single, Note-Hashtag-single]}}, "
                         f"{{name: shakespeare, path: {DATA}/general/tinyshakespeare.txt, weight: 1, limit: 400}}]"),
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]
