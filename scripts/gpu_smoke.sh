#!/usr/bin/env bash
# GPU smoke run: CPT -> SFT -> DPO, a few steps each, bf16 + flash-attention 2 + DeepSpeed ZeRO-3 on ONE
# GPU, then real tokens/s and MFU per stage. One command:
#
#   bash scripts/gpu_smoke.sh                                   # SmolLM2-135M-Instruct, 20 steps a stage
#   MODEL=Qwen/Qwen2.5-0.5B STEPS=40 MICRO=8 bash scripts/gpu_smoke.sh
#
# Needs CUDA, deepspeed and flash-attn (pip install -e '.[deepspeed,gpu]'). Data: the shipped demo
# sample (configs/pipeline/demo.yaml), full fine-tuning (no frozen layers), eval off.
# MFU = tokens/s x (6 N + 12 L H S) / peak, the PaLM definition: N = parameters (tied head counted once),
# L layers, H hidden size, S = data.seq_len (an upper bound on attention: packed documents are masked
# apart). Peak bf16 dense FLOP/s is guessed from the GPU name (H100/H200 989e12, A100 312e12, L40S 362e12);
# set PEAK_TFLOPS for others. The first logged window (CUDA/kernel warm-up) is left out of the average.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-smollm2-135m-instruct}
STEPS=${STEPS:-20}
MICRO=${MICRO:-4}
OUT=${OUT:-/tmp/redone-gpu-smoke-$(date +%Y%m%d-%H%M%S)}
PEAK_TFLOPS=${PEAK_TFLOPS:-}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/zero3.yaml}

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_smoke: no CUDA device')"
python -c "import deepspeed, flash_attn" 2>/dev/null || {
  echo "gpu_smoke: needs deepspeed and flash-attn: pip install -e '.[deepspeed,gpu]'" >&2; exit 1; }

overrides=("output_root=$OUT" "model.name_or_path=$MODEL" "model.attn_implementation=flash_attention_2"
           "eval.enabled=false" "sft.model.freeze_bottom_layers=0")
for stage in cpt sft dpo; do
  overrides+=("$stage.train.max_steps=$STEPS" "$stage.train.precision=bf16" "$stage.train.log_every=5"
              "$stage.train.save_every=$STEPS" "$stage.train.progress=false" "$stage.train.micro_batch_size=$MICRO")
done

echo "[gpu_smoke] $MODEL, $STEPS steps/stage, micro batch $MICRO, $ACCELERATE_CONFIG, output $OUT"
accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes 1 \
  -m redone pipeline --config configs/pipeline/demo.yaml "${overrides[@]}"

python - "$OUT" "$PEAK_TFLOPS" <<'EOF'
import json
import math
import sys
from pathlib import Path

import torch
from safetensors import safe_open

out, peak_arg = Path(sys.argv[1]), sys.argv[2]
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
peaks = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
peak = float(peak_arg) * 1e12 if peak_arg else next((v for k, v in peaks.items() if k in name), None)
print(f"\n[gpu_smoke] {name}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
print(f"{'stage':<6} {'params':>10} {'seq_len':>8} {'tokens/s':>10} {'MFU':>7}  final loss")
for stage in ("cpt", "sft", "dpo"):
    final = out / stage / "final"
    config = json.loads((final / "config.json").read_text())
    params = 0
    for file in final.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            params += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    seq_len = json.loads((final / "redone.json").read_text())["config"]["data"]["seq_len"]
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    flops_per_token = 6 * params + 12 * layers * hidden * seq_len
    logs = [json.loads(x) for x in (out / stage / "train_log.jsonl").read_text().splitlines()]
    rates = [x["tokens_per_s"] for x in logs if "tokens_per_s" in x][1:] or [logs[-1]["tokens_per_s"]]
    rate = sum(rates) / len(rates)
    mfu = rate * flops_per_token / peak if peak else float("nan")
    loss = [x["loss"] for x in logs if "loss" in x][-1]
    print(f"{stage:<6} {params / 1e6:>9.1f}M {seq_len:>8} {rate:>10.0f} {mfu:>7.1%}  {loss:.4f}")
EOF
