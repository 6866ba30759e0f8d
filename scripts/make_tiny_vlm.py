"""Make a tiny random-weight vision-language model offline (Idefics3 architecture), for image tests.

A SigLIP-style vision tower (64x64 pixels in 8x8 patches), a pixel-shuffle connector (scale 2)
and the tiny Llama of make_tiny_model.py, with Idefics3's processor (Pillow image processor,
no image splitting) and a chat template that places `<image>` where a message's content part
is an image. vLLM serves it as `Idefics3ForConditionalGeneration`, several images per prompt.

Why Idefics3 and not Llava: vLLM's Llava module imports Pixtral's image processor, which needs
torchvision, and the CPU venv has none (PyPI's torchvision is built for CUDA torch and breaks
`import transformers` beside the CPU torch). Idefics3 (SmolVLM's architecture) needs none.

It answers with gibberish, but each image goes through the real path: vLLM's media loading,
the processor, the vision tower and the connector; `prompt_tokens` grows by IMAGE_TOKENS per
image (16 `<image>` tokens, two `<fake_token_around_image>` and one `<global-img>`).
Nothing is downloaded.

    python scripts/make_tiny_vlm.py OUTDIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_model import llama_config, make_tokenizer

IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
SPECIAL = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
# prompt tokens one image adds: <fake><global-img><image>*IMAGE_SEQ_LEN<fake>
IMAGE_TOKENS = IMAGE_SEQ_LEN + 3
# Weights drawn wider than transformers' 0.02: at 0.02 the tiny model answers "\n" to every image.
INIT_RANGE = 0.1

# Content is a string or a list of OpenAI-style parts; an image part becomes <image>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_vlm(out: Path, hidden: int, layers: int, heads: int, ctx: int) -> dict[str, int]:
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    make_tokenizer(out, 512, extra_special=SPECIAL, chat_template=CHAT_TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(out)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)
    torch.manual_seed(0)
    text = llama_config(vocab, hidden, layers, heads, ctx, initializer_range=INIT_RANGE)
    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        initializer_range=INIT_RANGE,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        scale_factor=SCALE_FACTOR,
        pad_token_id=3,
        tie_word_embeddings=True,
    )
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": IMAGE_SIZE},
            max_image_size={"longest_edge": IMAGE_SIZE},
        ),
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return {"vocab": vocab, "image_token_id": image_token_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = make_vlm(args.out, args.hidden, args.layers, args.heads, args.context)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(json.dumps({"model": str(args.out), **info, "image_tokens": IMAGE_TOKENS, "bytes": size}))


if __name__ == "__main__":
    main()
