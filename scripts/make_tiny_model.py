"""Make a tiny random-weight Llama chat model offline, for `make run`, tests and benchmarks.

It answers with gibberish, but through the real vLLM code path: real tokenizer, chat
template, token counts, context limit. Nothing is downloaded.

    python scripts/make_tiny_model.py OUTDIR [--hidden 128 --layers 2 --heads 2]

head_dim (hidden / heads) must be 64 or more: vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# A few sentences are enough to train a byte-level BPE; the byte alphabet covers any text.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Spark reads the data, vLLM answers, and Spark writes one row per input row.",
    "How many legs does a spider have? A spider has eight legs.",
    "Explain batch inference in one sentence, please.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "You are a helpful assistant. Answer briefly and clearly.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer(
    out: Path,
    vocab_size: int,
    extra_special: list[str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>", "<pad>", *(extra_special or [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    if extra_special:
        fast.add_special_tokens({"additional_special_tokens": list(extra_special)})
    fast.chat_template = chat_template
    fast.save_pretrained(out)
    return int(tok.get_vocab_size())


def llama_config(vocab: int, hidden: int, layers: int, heads: int, ctx: int, **more: object) -> Any:
    """The tiny Llama's configuration (also the text model of make_tiny_vlm.py)."""
    from transformers import LlamaConfig

    if hidden % heads or hidden // heads < 64:
        raise SystemExit(f"hidden/heads = {hidden}/{heads}: head_dim must be a whole number >= 64")
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=ctx,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
        tie_word_embeddings=True,
        **more,
    )


def make_model(out: Path, vocab: int, hidden: int, layers: int, heads: int, ctx: int) -> None:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = llama_config(vocab, hidden, layers, heads, ctx, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(args.out, args.vocab)
    make_model(args.out, vocab, args.hidden, args.layers, args.heads, args.context)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(json.dumps({"model": str(args.out), "vocab": vocab, "bytes": size}))


if __name__ == "__main__":
    main()
