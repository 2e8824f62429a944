"""A tiny random-init Idefics3 (SmolVLM-class) model with an offline processor, and VQA data about coloured shapes.

The model is the real architecture (Idefics3ForConditionalGeneration: SigLIP-style vision tower, pixel-shuffle
connector, Llama text model) built from a config at toy size; the processor is the real Idefics3Processor with
SmolVLM's chat template and a tokenizers-library WordLevel tokenizer (no download). Sources: installed transformers
5.24 models/idefics3/{configuration,processing}_idefics3.py; the chat template is SmolVLM-256M-Instruct's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"colour": ["What color is the shape?", "Which color is it?"],
             "shape": ["What shape is this?", "Which shape is shown?"]}
WORDS = ("user assistant what which color is the shape this it shown of a ? : . , !".split()
         + list(COLOURS) + list(SHAPES))


def tiny_smolvlm(path: Path, image_size: int = 32, hidden: int = 64, seed: int = 0, vision: dict | None = None,
                 text: dict | None = None, patch: int = 8, scale_factor: int = 2, vocab_size: int | None = None) -> Path:
    """Save a toy Idefics3 model + Idefics3Processor (image_seq_len 4) that load offline with Auto classes.

    `vision` / `text` / `patch` / `scale_factor` / `vocab_size` override the toy sizes (evals/bench_vlm.py builds a
    SmolVLM-256M-sized model this way)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, PreTrainedTokenizerFast

    try:  # transformers >= 5.2x names the PIL backend explicitly (the default one wants torchvision)
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import Idefics3ImageProcessor as ImageProcessor

    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    vocab = {t: i for i, t in enumerate(special + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<end_of_utterance>", pad_token="<|im_end|>",
                                   additional_special_tokens=special[4:7])
    ip = ImageProcessor(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
                                   do_image_splitting=False)
    seq = (image_size // patch) ** 2 // (scale_factor ** 2)
    proc = Idefics3Processor(image_processor=ip, tokenizer=fast, image_seq_len=seq, chat_template=SMOLVLM_CHAT_TEMPLATE)
    vision_cfg = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 2,
                  **(vision or {}), "image_size": image_size, "patch_size": patch}
    text_cfg = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "initializer_range": 0.2,  # at hidden 64 a frozen random lm_head at the default 0.02 caps every logit near 1
                **(text or {}), "vocab_size": max(vocab_size or 0, len(fast)),
                "pad_token_id": fast.pad_token_id, "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id}
    cfg = Idefics3Config(vision_config=vision_cfg, text_config=text_cfg, image_token_id=fast.convert_tokens_to_ids("<image>"),
                         scale_factor=scale_factor, pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def shape_image(colour: str, shape: str, rng: random.Random, size: int = 40):
    """A coloured shape at a random place and size on a light background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randint(225, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 4, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def shapes_vqa(root: Path, n: int = 160, seed: int = 0, kinds: tuple[str, ...] = ("colour",), size: int = 40) -> Path:
    """root/train.jsonl (+ root/images/): image, query (a non-canonical question column), answer."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        kind = rng.choice(kinds)
        rel = f"images/{i:05d}.png"
        shape_image(colour, shape, rng, size).save(root / rel)
        answer = colour if kind == "colour" else shape
        lines.append(json.dumps({"image": str(root / rel), "query": rng.choice(QUESTIONS[kind]), "answer": answer}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root
