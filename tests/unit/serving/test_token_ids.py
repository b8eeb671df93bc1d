"""Embedding inputs as cl100k_base token ids (qingliang.serving.token_ids).

The ids are made the way clients make them: with tiktoken itself, reading OpenAI's file
from a cache that :func:`write_tiktoken_cache` seeds (tiktoken checks its SHA-256), so the
decoder is checked against the real tokenizer, not against itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from qingliang.platform.errors import BadRequest
from qingliang.serving import token_ids
from qingliang.serving.token_ids import (
    MAX_IDS_PER_INPUT,
    MAX_IDS_PER_REQUEST,
    TIKTOKEN_URL,
    decode_token_ids,
    is_token_ids,
    write_tiktoken_cache,
)

TEXTS = [
    "今天天气很好",
    "The weather is nice today",
    "矿山设备维修: replace the conveyor belt's bearing (型号 6205-2RS), 2.5 kN·m",
    "emoji 🚜 and tabs\tand\nnew lines",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def tiktoken_cl100k(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiktoken's own cl100k_base, offline: its cache seeded from the bpe-openai wheel."""
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken_ext.openai_public as public

    cache = tmp_path_factory.mktemp("tiktoken")
    written = write_tiktoken_cache(cache)
    assert written.name == hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        # What tiktoken.get_encoding("cl100k_base") runs, without its process-wide
        # registry (another test may have loaded it already): it reads the cached file
        # and checks it against the SHA-256 OpenAI publishes (else it would download).
        return tiktoken.Encoding(**public.cl100k_base())


def test_decodes_what_tiktoken_encodes(tiktoken_cl100k: Any) -> None:
    ids = [tiktoken_cl100k.encode_ordinary(t) for t in TEXTS]
    assert decode_token_ids(ids) == TEXTS
    # A flat list of ints is one input.
    assert decode_token_ids(ids[0]) == [TEXTS[0]]


def test_special_tokens_decode_as_their_text(tiktoken_cl100k: Any) -> None:
    ids = tiktoken_cl100k.encode("a<|endoftext|>b", allowed_special="all")
    assert 100257 in ids
    assert decode_token_ids(ids) == ["a<|endoftext|>b"] == [tiktoken_cl100k.decode(ids)]


def test_a_character_cut_in_two_decodes_as_tiktoken_does(tiktoken_cl100k: Any) -> None:
    # LangChain cuts long texts every 8191 ids; a cut may fall inside a character.
    ids = tiktoken_cl100k.encode_ordinary("天气很好")
    cut = next(i for i in range(1, len(ids)) if tiktoken_cl100k.decode(ids[:i]).endswith("\ufffd"))
    parts = decode_token_ids([ids[:cut], ids[cut:]])
    assert parts == [tiktoken_cl100k.decode(ids[:cut]), tiktoken_cl100k.decode(ids[cut:])]
    assert "\ufffd" in parts[0]


def test_agrees_with_bpe_openai_tokenizer() -> None:
    bpe = pytest.importorskip("bpe_openai")
    enc = bpe.get_encoding("cl100k_base")
    ids = [enc.encode(t) for t in TEXTS]
    assert decode_token_ids(ids) == [enc.decode(i) for i in ids] == TEXTS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2], True),
        ([[1], [2, 3]], True),
        ([[]], True),
        (["a"], False),
        ("a", False),
        ([], False),
        ([True], False),
        ([1.0], False),
        (None, False),
    ],
)
def test_is_token_ids(value: object, expected: bool) -> None:
    assert is_token_ids(value) is expected


@pytest.mark.parametrize(
    ("value", "param", "fragment"),
    [
        ([1, 100300], "input[1]", "100300, not a cl100k_base token id"),
        ([[1], [2, -1]], "input[1][1]", "-1, not a cl100k_base token id"),
        ([[1], [100261]], "input[1][0]", "100261"),  # a gap between the special tokens
        ([[1], [2, 1.5]], "input[1][1]", "must be a token id (an integer), not float"),
        ([[1], [True]], "input[1][0]", "not bool"),
        ([1, "a"], "input[1]", "not str"),
        ([[1], "a"], "input[1]", "must be a list of token ids"),
        ([[1], []], "input[1]", "empty list of token ids"),
        ([[0]] * 2049, "input", "at most 2048"),
        ([1] * (MAX_IDS_PER_INPUT + 1), "input", f"at most {MAX_IDS_PER_INPUT}"),
        ([[1] * 8000] * 38, "input", f"at most {MAX_IDS_PER_REQUEST} in one request"),
    ],
)
def test_bad_ids_are_400_naming_the_item(value: list, param: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_token_ids(value)
    assert caught.value.param == param
    assert fragment in str(caught.value), str(caught.value)


def test_decoded_text_is_bounded() -> None:
    # The longest cl100k tokens are 128 bytes: 300 000 of them would be 38 MB of text.
    longest = max(range(100256), key=lambda i: len(token_ids._load()[i]))
    with pytest.raises(BadRequest, match="decode to more than") as caught:
        decode_token_ids([[longest] * 8000] * 10)
    assert caught.value.param == "input"


def test_without_bpe_openai_the_400_says_what_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def hidden(name: str, *args: Any) -> Any:
        return None if name == "bpe_openai" else find_spec(name, *args)

    monkeypatch.setattr(token_ids, "_table", None)
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(BadRequest) as caught:
        decode_token_ids([[37271]])
    assert caught.value.param == "input"
    assert "bpe-openai" in str(caught.value)
    assert "check_embedding_ctx_length=False" in str(caught.value)
    with pytest.raises(RuntimeError, match="not installed"):
        write_tiktoken_cache(Path("/nonexistent"))


def test_tiktoken_cache_defaults_to_tiktokens_own_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    written = write_tiktoken_cache()
    assert written.parent == tmp_path / "tk"
    assert hashlib.sha256(written.read_bytes()).hexdigest() == token_ids.TIKTOKEN_SHA256
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no temp file left


def test_main_seeds_the_cache_and_says_what_to_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert token_ids.main([str(tmp_path / "tk")]) == 0
    assert capsys.readouterr().out == f"export TIKTOKEN_CACHE_DIR={tmp_path / 'tk'}\n"
    assert (tmp_path / "tk" / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()).is_file()
    assert token_ids.main(["--help"]) == 2
    assert "usage" in capsys.readouterr().err
