"""Build a tiny random Llama (and PEFT adapters for it) for tests and benchmarks.

No model hub is reachable here, so tests build their model: a random
``LlamaForCausalLM`` (head_dim 32: vLLM's CPU attention rejects 16) with a BPE
tokenizer trained by ``tokenizers`` on a few KB of text and a ChatML chat template.

Example:
    >>> from pathlib import Path
    >>> from qingliang.serving.tiny_model import build_tiny_llama
    >>> path = build_tiny_llama(Path("/tmp/tiny-llama"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "Qingliang deploys and orchestrates large models lightly. "
    "The quick brown fox jumps over the lazy dog. "
    "Ray Serve hosts vLLM engines; adapters load at run time. "
    "Government services, healthcare and manufacturing are the three domains. "
    "one two three four five six seven eight nine ten eleven twelve. "
    "What is the capital of France? Paris is the capital of France. "
)


def build_tiny_llama(path: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a random tiny Llama with tokenizer and chat template to ``path`` (idempotent)."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Larger weights than the default init so greedy outputs vary with the prompt.
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    gen = {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id}
    (path / "generation_config.json").write_text(json.dumps(gen))
    logger.debug("built tiny llama at %s", path)
    return path


def build_tiny_adapter(base: Path, path: Path, *, seed: int = 1, rank: int = 8) -> Path:
    """Write a random LoRA adapter for the tiny Llama (non-zero B so it changes output)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        return path
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(path))
    return path
