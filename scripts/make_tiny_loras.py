"""Make tiny random LoRA adapters for the tiny Llama offline (peft), for LoRA-per-row tests.

Each adapter has rank 8 on q_proj/k_proj/v_proj/o_proj with weights drawn at random from its own
seed (peft's `init_lora_weights=False`: an adapter made the usual way starts as the identity,
which would answer exactly as the base model), scaled by lora_alpha / rank = 8: at the usual 2
an adapter moves the tiny model too little, and its greedy answer is one token repeated for
every prompt. At temperature 0 the base model and each adapter give different answers.
Nothing is downloaded.

    python scripts/make_tiny_loras.py BASE_MODEL OUTDIR NAME [NAME ...]

writes OUTDIR/NAME/{adapter_config.json, adapter_model.safetensors} for each NAME.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RANK = 8
SCALE = 8  # lora_alpha / rank


def make_adapter(base: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=RANK,
        lora_alpha=SCALE * RANK,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    for path in out.iterdir():  # safetensors writes 0600: the sidecar's user must read them
        path.chmod(0o644)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    for seed, name in enumerate(args.names, start=1):
        make_adapter(args.base, args.out / name, seed)
    print(json.dumps({"base": str(args.base), "adapters": args.names, "rank": RANK}))


if __name__ == "__main__":
    main()
