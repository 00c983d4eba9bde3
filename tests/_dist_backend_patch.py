"""TEST-ONLY launcher: ``redone`` under torchrun on a CPU box, with DeepSpeed and a per-rank probe.

Never imported by the package. Run as ``torchrun --nproc_per_node 2 -m tests._dist_backend_patch
train --stage cpt ...`` (the arguments are ``redone``'s).

1. Backend patch (only with ``ACCELERATE_USE_DEEPSPEED=true``): accelerate 1.15 never selects DeepSpeed
   without a GPU; ``PartialState._prepare_backend`` is patched to answer ("gloo", MULTI_CPU) on a
   CUDA-less machine with WORLD_SIZE > 1, after which accelerate initialises DeepSpeed's comm over gloo
   and runs the real ZeRO engine (see the shared ENVIRONMENT.md). DeepSpeed's shared-memory CPU
   allreduce op is switched off (it would JIT-compile for minutes); gloo carries the collectives.
   On a GPU box nothing is patched.
2. Rank probe (with ``REDONE_TEST_PROBE=DIR``): each rank writes ``DIR/rank-<r>.json`` recording what it
   holds right after the model is built and at the end of training: local vs full parameter counts,
   a fingerprint of its local parameters, and on rank 0 per-tensor hashes of the gathered state dict
   (what ``save_final`` writes) -- so tests can assert partitioning and cross-rank equality from inside
   the run, without any debug hook in the package.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path


def apply_backend_patch() -> None:
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return "gloo", DistributedType.MULTI_CPU
        return original(self, cpu, sagemaker_dp, backend)

    PartialState._prepare_backend = _prepare_backend
    # DeepSpeed's CPU comm backend JIT-compiles a shared-memory allreduce op on first use (minutes on 2
    # cores); without it DeepSpeed falls back to plain torch.distributed (gloo), which is what we test.
    # (importlib: the attribute ``deepspeed.comm.torch`` is the torch package, not this module)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def tensor_hash(tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().float()
    return hashlib.sha256(data.view(-1).numpy().tobytes()).hexdigest()[:16]


def local_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor_hash(param).encode())
    return digest.hexdigest()[:16]


def install_probe(directory: str) -> None:
    """Wrap loop.build_model and loop.save_final to record what each rank holds (test-only)."""
    from redone import distributed
    from redone.train import loop

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    build_model, save_final = loop.build_model, loop.save_final

    def probing_build_model(config, accelerator):
        model = build_model(config, accelerator)
        record["rank"], record["world"] = accelerator.process_index, accelerator.num_processes
        record["distributed_type"] = str(accelerator.distributed_type)
        record["zero_stage"] = distributed.zero_stage(accelerator)
        record["built"] = {"local_numel": distributed.local_numel(model),
                           "full_numel": distributed.full_numel(model)}
        return model

    def probing_save_final(config, accelerator, model, tokenizer, stage, state):
        final = save_final(config, accelerator, model, tokenizer, stage, state)
        unwrapped = accelerator.unwrap_model(model)
        record["end"] = {"local_numel": distributed.local_numel(unwrapped),
                         "full_numel": distributed.full_numel(unwrapped),
                         "local_fingerprint": local_fingerprint(unwrapped),
                         "trainable": sum(getattr(p, "ds_numel", p.numel())
                                       for p in unwrapped.parameters() if p.requires_grad)}
        if distributed.is_zero3(accelerator):
            shard = [p.ds_tensor.numel() for p in unwrapped.parameters() if hasattr(p, "ds_tensor")]
            record["end"]["shard_numel"] = sum(shard)
        gathered = accelerator.get_state_dict(model)  # collective under ZeRO-3
        if accelerator.is_main_process:
            record["gathered"] = {k: tensor_hash(v) for k, v in gathered.items()}
        (out / f"rank-{accelerator.process_index}.json").write_text(json.dumps(record, indent=1))
        return final

    loop.build_model, loop.save_final = probing_build_model, probing_save_final


def main(argv: list[str]) -> int:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        apply_backend_patch()
    if os.environ.get("REDONE_TEST_PROBE"):
        install_probe(os.environ["REDONE_TEST_PROBE"])
    from redone.cli import main as redone_main

    return redone_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
