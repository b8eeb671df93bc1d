"""The shared LoRA / QLoRA training loop on a tiny random Llama built at test time.

Real peft, transformers and bitsandbytes (4-bit NF4 on the CPU); no Ray, no network.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from qingliang.platform.errors import BadRequest
from qingliang.platform.lifecycle.finetune import _data, _model, _steps
from qingliang.platform.lifecycle.finetune.train import (
    InvalidFineTune,
    LoraSettings,
    TrainSettings,
    preflight,
    train,
)
from qingliang.serving.tiny_model import build_tiny_llama

torch.set_num_threads(1)

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ]
}
INSTRUCTION = {"instruction": "Count on", "input": "one two", "output": "three four five"}
RECORDS = [CHAT, INSTRUCTION] * 4
ALL_LINEAR = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("all-linear",))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("ft") / "base")


@pytest.fixture(scope="module")
def tok(base: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def fast(**kw: Any) -> TrainSettings:
    """Settings that move the tiny model quickly."""
    args: dict[str, Any] = {
        "learning_rate": 1e-2,
        "lr_schedule": "constant",
        "batch_size": 4,
        "max_seq_len": 64,
        "lora": ALL_LINEAR,
    }
    return TrainSettings(**(args | kw))


def trained_text(tok: Any, ex: _data.Example) -> str:
    return tok.decode([t for t in ex.labels if t != _data.IGNORE])


# ------------------------------------------------------------------ training


def test_lora_loss_falls_and_adapter_and_metrics_are_written(base: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    out = tmp_path / "lora"
    result = train(
        base,
        RECORDS,
        out,
        fast(max_steps=20, eval_every=10),
        eval_records=[CHAT, INSTRUCTION],
        data_sha256="caller-hash",
        on_progress=events.append,
    )
    losses = result.train_loss
    assert len(losses) == 20 and result.steps == 20 and not result.stopped
    assert losses[-1] < losses[0] - 1.0, losses  # 6.1 -> ~4.2 measured
    assert {p.name for p in out.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
    }
    assert not (out / "checkpoint").exists()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_model"] == str(base) and metrics["method"] == "lora"
    assert metrics["data_sha256"] == "caller-hash" == result.data_sha256
    assert [h["loss"] for h in metrics["train_loss"]] == list(losses)
    assert metrics["steps"] == 20 and metrics["total_steps"] == 20
    assert metrics["final_eval_loss"] == result.final_eval_loss < 6.0
    assert metrics["settings"]["lora"]["target_modules"] == ["all-linear"]
    assert metrics["target_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert metrics["peak_rss_mb"] > 100 and metrics["train_time_s"] > 0

    steps = [e for e in events if e["kind"] == "train"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert [e["step"] for e in steps] == list(range(1, 21))
    assert set(steps[0]) == {
        "kind",
        "step",
        "total_steps",
        "epoch",
        "loss",
        "learning_rate",
        "tokens_per_s",
        "elapsed_s",
        "peak_rss_mb",
    }
    assert steps[1]["epoch"] == 1.0 and steps[0]["tokens_per_s"] > 0
    assert [(e["step"], e["eval_loss"]) for e in evals] == list(result.eval_loss)
    assert [e["step"] for e in evals] == [10, 20]


def test_without_max_steps_epochs_decide_the_step_count(base: Path, tmp_path: Path) -> None:
    result = train(base, RECORDS, tmp_path / "o", fast(epochs=2, batch_size=3, grad_accum=2))
    # 8 records / 3 per batch = 3 micro-batches -> 2 optimizer steps per epoch
    assert result.steps == result.total_steps == 4


def test_qlora_loads_the_base_4bit_nf4_with_double_quantisation(base: Path) -> None:
    import bitsandbytes as bnb

    model = _model.load_for_training(base, "qlora", "cpu", gradient_checkpointing=False)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit)
    state = q.weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: double quantisation
    assert q.compute_dtype == torch.float32
    assert q.weight.dtype == torch.uint8


def test_qlora_run_saves_an_adapter_that_changes_the_output(base: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "qlora"
    result = train(base, RECORDS, out, fast(method="qlora", max_steps=2))
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.train_loss)))
    assert json.loads((out / "metrics.json").read_text())["method"] == "qlora"

    ids = torch.tensor([[3, 10, 20, 30, 40, 50]])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(model, str(out)).eval()
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3


# ------------------------------------------------------------------ pre-flight


def _bad_dir(tmp_path: Path) -> Path:
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "weights.bin").write_bytes(b"x")
    return tmp_path / "not-a-model"


CASES: dict[str, tuple[Any, str, str]] = {
    # name: (change, expected param, text in the message)
    "base missing": ({"base": "missing"}, "base_model", "does not exist"),
    "base not HF": ({"base": "bad"}, "base_model", "no config.json"),
    "unknown module": (
        {"lora": LoraSettings(target_modules=("q_proj", "qkv_proj"))},
        "lora.target_modules[1]",
        "available: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    ),
    "misspelt module": (
        {"lora": LoraSettings(target_modules=("q_prj",))},
        "lora.target_modules[0]",
        "did you mean 'q_proj'?",
    ),
    "rank too large": (
        {"lora": LoraSettings(r=48, target_modules=("q_proj", "k_proj"))},
        "lora.r",
        "smallest targeted layer dimension 32 (model.layers.0.self_attn.k_proj: 64 -> 32)",
    ),
    "bad record": (
        {"records": [CHAT, {"messages": [{"role": "user", "content": "hi"}]}]},
        "train_records[1].messages",
        "no assistant message",
    ),
    "unknown record key": (
        {"records": [{"instruction": "a", "outptu": "b"}]},
        "train_records[0].outptu",
        "did you mean 'output'?",
    ),
    "bad role": (
        {"records": [{"messages": [{"role": "bot", "content": "x"}]}]},
        "train_records[0].messages[0].role",
        "must be one of system, user, assistant",
    ),
    "no records": ({"records": []}, "train_records", "no records"),
    "eval without records": ({"eval_every": 2}, "train.eval_every", "no eval_records"),
    "output not empty": ({"output": "full"}, "output_dir", "is not empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_rejects_with_the_field_and_writes_nothing(
    case: str, base: Path, tmp_path: Path
) -> None:
    change, param, text = CASES[case]
    model = {"missing": tmp_path / "nope", "bad": _bad_dir(tmp_path)}.get(change.get("base"), base)
    out = tmp_path / "out"
    if change.get("output") == "full":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    lora = change.get("lora", LoraSettings())
    settings = TrainSettings(max_steps=1, eval_every=change.get("eval_every", 0), lora=lora)
    with pytest.raises(InvalidFineTune) as err:
        train(model, change.get("records", RECORDS), out, settings)
    assert isinstance(err.value, BadRequest) and err.value.status_code == 400
    assert err.value.param == param, str(err.value)
    assert text in str(err.value)
    if change.get("output") == "full":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"batch_size": 0}, "train.batch_size"),
        ({"batch_size": 5000}, "train.batch_size"),
        ({"learning_rate": 0.0}, "train.learning_rate"),
        ({"learning_rate": 3.0}, "train.learning_rate"),
        ({"learning_rate": float("nan")}, "train.learning_rate"),
        ({"max_steps": 0}, "train.max_steps"),
        ({"epochs": 0}, "train.epochs"),
        ({"grad_accum": True}, "train.grad_accum"),
        ({"max_seq_len": 4}, "train.max_seq_len"),
        ({"warmup_ratio": 1.0}, "train.warmup_ratio"),
        ({"method": "dora"}, "train.method"),
        ({"lr_schedule": "step"}, "train.lr_schedule"),
    ],
)
def test_out_of_range_settings_are_refused_on_construction(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidFineTune) as err:
        TrainSettings(**kwargs)
    assert err.value.param == param


def test_bad_lora_settings_name_their_field() -> None:
    for kwargs, param in [
        ({"r": 0}, "lora.r"),
        ({"alpha": -1}, "lora.alpha"),
        ({"dropout": 1.0}, "lora.dropout"),
        ({"target_modules": ()}, "lora.target_modules"),
        ({"target_modules": ("q_proj", "")}, "lora.target_modules[1]"),
        ({"target_modules": ("all-linear", "q_proj")}, "lora.target_modules"),
    ]:
        with pytest.raises(InvalidFineTune) as err:
            LoraSettings(**kwargs)
        assert err.value.param == param
    assert LoraSettings(target_modules=["q_proj"]).target_modules == ("q_proj",)  # type: ignore[arg-type]


def test_qlora_is_refused_when_bitsandbytes_is_unusable(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model.bnb_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` fails
    try:
        with pytest.raises(InvalidFineTune) as err:
            train(base, RECORDS, tmp_path / "out", TrainSettings(method="qlora", max_steps=1))
    finally:
        _model.bnb_problem.cache_clear()
    assert err.value.param == "train.method"
    assert "bitsandbytes is not importable" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_preflight_reads_no_weights(base: Path, tmp_path: Path) -> None:
    """A checkpoint with corrupt weights still gets its settings checked (and passes)."""
    copy = tmp_path / "corrupt"
    shutil.copytree(base, copy)
    (copy / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InvalidFineTune, match="target_modules"):
        preflight(
            copy,
            RECORDS,
            tmp_path / "o",
            TrainSettings(lora=LoraSettings(r=4, target_modules=("x",))),
        )
    plan = preflight(copy, RECORDS, tmp_path / "o", TrainSettings(method="qlora"))
    assert plan.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert plan.targeted_layers == 8 and plan.device == "cpu"
    assert len(plan.train) == 8 and len(plan.data_sha256) == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(base: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidFineTune) as err:
        preflight(base, RECORDS, tmp_path / "o", TrainSettings(device="cuda"))
    assert err.value.param == "train.device"


# ------------------------------------------------------------------ data


def test_chat_template_labels_only_the_assistant_turns(tok: Any) -> None:
    conv = _data.parse_records(
        [
            {
                "messages": [
                    {"role": "user", "content": "one two"},
                    {"role": "assistant", "content": "three"},
                    {"role": "user", "content": "four five"},
                    {"role": "assistant", "content": "six seven"},
                ]
            }
        ],
        "r",
    )[0]
    ex = _data.tokenize(tok, conv, 512)
    assert trained_text(tok, ex) == "three<|im_end|>\nsix seven<|im_end|>\n"
    prompt = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == _data.IGNORE]
    assert tok.decode(prompt) == (
        "<|im_start|>user\none two<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nfour five<|im_end|>\n<|im_start|>assistant\n"
    )
    assert all(lab in (_data.IGNORE, t) for t, lab in zip(ex.input_ids, ex.labels, strict=True))


def test_instruction_record_becomes_user_and_assistant_turns(tok: Any) -> None:
    conv = _data.parse_records([INSTRUCTION], "r")[0]
    assert conv == (("user", "Count on\n\none two"), ("assistant", "three four five"))
    ex = _data.tokenize(tok, conv, 512)
    assert trained_text(tok, ex) == "three four five<|im_end|>\n"
    assert ex.labels[: len(ex.labels) - ex.trained_tokens] == (_data.IGNORE,) * (
        len(ex.labels) - ex.trained_tokens
    )


def test_fallback_template_without_a_chat_template(base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = None
    conv = _data.parse_records([CHAT], "r")[0]
    ex = _data.tokenize(tok, conv, 512)
    assert tok.decode(ex.input_ids) == (
        "<s>### System:\nBe brief.\n\n### User:\nWhat is the capital of France?\n\n"
        "### Assistant:\nParis is the capital of France.<|im_end|>\n\n"
    )
    assert trained_text(tok, ex) == "Paris is the capital of France.<|im_end|>\n\n"
    assert _data.render_prompt(tok, conv[:2]).endswith("France?\n\n### Assistant:\n")


def test_truncation_and_per_batch_padding(tok: Any) -> None:
    convs = _data.parse_records(RECORDS[:2], "r")
    full = _data.tokenize(tok, convs[0], 512)
    cut = _data.tokenize(tok, convs[0], len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    # A record cut before its answer has nothing to learn from: skipped and counted.
    kept, skipped = _data.tokenize_all(tok, convs, 12)
    assert skipped == 2 and kept == []

    exs = [_data.tokenize(tok, c, 512) for c in convs]
    batch = _data.collate(exs, pad_id=2)
    longest = max(len(e.input_ids) for e in exs)
    assert batch["input_ids"].shape == (2, longest)
    short = min(range(2), key=lambda i: len(exs[i].input_ids))
    n = len(exs[short].input_ids)
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (longest - n)
    assert batch["labels"][short, n:].eq(_data.IGNORE).all()
    assert batch["input_ids"][short, n:].eq(2).all()


def test_windows_cover_each_example_once_per_epoch_in_a_seeded_order() -> None:
    ws = list(_data.windows(7, 2, 2, total_steps=4, seed=3))
    assert [w.step for w in ws] == [1, 2, 3, 4] and [w.epoch for w in ws] == [0.5, 1, 1.5, 2]
    first = sorted(i for w in ws[:2] for b in w.batches for i in b)
    assert first == list(range(7))
    assert ws == list(_data.windows(7, 2, 2, total_steps=4, seed=3))
    assert ws != list(_data.windows(7, 2, 2, total_steps=4, seed=4))


def test_learning_rate_schedules() -> None:
    def rates(**kw: Any) -> list[float]:
        f = _steps.lr_factor(TrainSettings(**kw), 5)
        return [round(f(done), 3) for done in range(5)]

    # warm-up ceil(0.2 * 5) = 1 step at half the rate, then decay over the other 4
    assert rates(warmup_ratio=0.2) == [0.5, 1.0, 0.75, 0.5, 0.25]
    assert rates(lr_schedule="cosine") == [1.0, 0.905, 0.655, 0.345, 0.095]
    assert rates(lr_schedule="constant") == [1.0] * 5


def test_data_hash_is_canonical() -> None:
    a = _data.data_sha256([{"output": "b", "instruction": "a"}])
    assert a == _data.data_sha256([{"instruction": "a", "output": "b"}])
    assert a != _data.data_sha256([{"instruction": "a", "output": "c"}])


# ------------------------------------------------------------------ stop and resume


def test_stop_saves_the_last_completed_step_and_resume_matches_a_full_run(
    base: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    # Dropout on, warm-up and decay: the checkpoint must restore RNG and schedule too.
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"))
    settings = fast(max_steps=6, lr_schedule="linear", warmup_ratio=0.2, lora=lora)
    full = train(base, RECORDS, tmp_path / "full", settings)

    seen: list[int] = []
    out = tmp_path / "stopped"
    stopped = train(
        base,
        RECORDS,
        out,
        settings,
        on_progress=lambda e: seen.append(e["step"]),
        should_stop=lambda: len(seen) >= 3,
    )
    assert stopped.stopped and stopped.steps == 3 and seen == [1, 2, 3]
    assert stopped.adapter_dir == out and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["stopped"] is True
    assert (out / "checkpoint" / "state.json").is_file()
    assert stopped.train_loss == full.train_loss[:3]

    with pytest.raises(InvalidFineTune) as err:  # without resume the directory is in use
        train(base, RECORDS, out, settings)
    assert err.value.param == "output_dir"
    with pytest.raises(InvalidFineTune) as err:  # resume needs the same settings
        train(base, RECORDS, out, TrainSettings(max_steps=7, lora=lora), resume=True)
    assert err.value.param == "train"

    resumed = train(base, RECORDS, out, settings, resume=True)
    assert resumed.steps == 6 and not resumed.stopped
    assert resumed.train_loss == pytest.approx(full.train_loss, rel=1e-5)
    assert not (out / "checkpoint").exists()
    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "full" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_stop_before_the_first_step_writes_nothing(base: Path, tmp_path: Path) -> None:
    result = train(base, RECORDS, tmp_path / "o", fast(max_steps=3), should_stop=lambda: True)
    assert result.stopped and result.steps == 0 and result.adapter_dir is None
    assert not (tmp_path / "o").exists()
