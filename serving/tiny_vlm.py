"""Build a tiny random vision-language model (Idefics3) and a LoRA adapter for it.

No real VLM weights ship and no model hub is reachable here, so the native image path
is tested on a randomly initialised Idefics3 (the architecture vLLM's CPU build serves
without torchvision: its processor runs on Pillow), ~260k parameters, built in seconds
(recipe and what was verified: ../shared/MODELS.md, "Tiny vision-language model"):

* a character-level tokenizer (random ByteLevel tokens may decode to incomplete UTF-8,
  which vLLM holds back), with Idefics3's image tokens as special tokens;
* a chat template that renders ``image`` and ``image_url`` parts as ``<image>``;
* a 64-pixel image processor (no splitting), 4 image tokens per image;
* weights drawn from N(0, 0.2), so greedy answers change with the image and the adapter.

Example:
    >>> from pathlib import Path
from typing import Any
    >>> from qingliang.serving.tiny_vlm import build_tiny_idefics3
    >>> path = build_tiny_idefics3(Path("/tmp/tiny-vlm"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] in ('image', 'image_url') %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

_SPECIAL = [
    "<unk>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<|endoftext|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]
#: What the tokenizer can spell: printable ASCII and a few CJK characters.
_CHARS = sorted(set(string.printable) - set("\x0b\x0c\r") | set("图片文字数字你好是的"))

#: Pixels on the longest edge the image processor resizes to (64/16 = 4 patches a side).
IMAGE_EDGE = 64
#: Image tokens per image: (64/16)^2 patches over scale_factor 2 squared.
IMAGE_SEQ_LEN = 4


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL)}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=_SPECIAL[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_idefics3(path: Path, *, seed: int = 0) -> Path:
    """Write a random tiny Idefics3 with its processor and chat template to ``path``
    (idempotent)."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "preprocessor_config.json").exists():
        return path
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models import idefics3
    from transformers.models.idefics3 import Idefics3Processor

    # Pillow-based where transformers splits Pil/torchvision processors (no torchvision here).
    ImageProcessor: Any = getattr(
        idefics3, "Idefics3ImageProcessorPil", idefics3.Idefics3ImageProcessor
    )

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_processor = ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_EDGE},
        max_image_size={"longest_edge": IMAGE_EDGE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)

    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_EDGE,
            "patch_size": 16,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    gen = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    (path / "generation_config.json").write_text(json.dumps(gen))
    logger.debug("built tiny idefics3 at %s", path)
    return path


def build_tiny_vlm_adapter(base: Path, path: Path, *, seed: int = 1, rank: int = 8) -> Path:
    """Write a random LoRA adapter on the tiny Idefics3's text model (non-zero B, so it
    changes the output)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        return path
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj)",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(path))
    return path
