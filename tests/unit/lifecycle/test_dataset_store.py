"""DatasetStore: reading sources, governance, content-addressed versions, deletion,
retention and the audit log, on real files and a real SQLite database under tmp_path."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qingliang.platform.control.apply import Controller
from qingliang.platform.errors import BadRequest, NotFound, ResolveError
from qingliang.platform.lifecycle.data import store as store_mod
from qingliang.platform.lifecycle.data.manifest import Dataset
from qingliang.platform.lifecycle.data.store import PREFIX, DatasetStore
from qingliang.platform.settings import Settings

REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def chat(user: str, answer: str, **extra: Any) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


QUESTIONS = [
    ("居住证怎么办理？", "携带身份证和租房合同到街道服务中心办理，五个工作日内领取。"),
    ("社保卡丢了怎么补办？", "先拨打热线挂失，再带身份证到任一社保网点补办新卡。"),
    ("公积金可以提前提取吗？", "购房、退休或大病等情形可以申请提前提取住房公积金。"),
    ("How do I renew a business licence?", "Apply online at the service portal before expiry."),
    ("新生儿怎么上户口？", "出生一个月内带出生医学证明到派出所办理户口登记。"),
    ("驾驶证到期怎么换证？", "到期前九十天内可在交管平台线上申请换领驾驶证。"),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dataset(name: str = "gov-sft", **spec: Any) -> Dataset:
    body = {"sources": [{"path": "train.jsonl"}], "split": {"eval_fraction": 0.0}, **spec}
    return Dataset.model_validate(
        {
            "apiVersion": "qingliang.io/v1",
            "kind": "Dataset",
            "metadata": {"name": name},
            "spec": body,
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> DatasetStore:
    return DatasetStore(tmp_path / "home" / "datasets", env={"QL_SALT": "pepper"}, clock=clock)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "manifests"
    write_jsonl(folder / "train.jsonl", [chat(q, a) for q, a in QUESTIONS])
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------- ingestion


def test_jsonl_chat_records_are_stored_with_stable_ids(store: DatasetStore, src: Path) -> None:
    v = store.cut(dataset(), src, actor="alice")
    assert v.version.startswith(PREFIX) and len(v.version) == len(PREFIX) + 64
    assert (v.records, v.train, v.eval, v.quarantined, v.latest) == (6, 6, 0, 0, True)
    records = store.read("gov-sft", v.version)
    assert [r["messages"][0]["content"] for r in records] == [q for q, _ in QUESTIONS]
    assert all(len(r["id"]) == 24 and set(r) == {"id", "messages"} for r in records)
    assert v.path is not None and sorted(p.name for p in v.path.iterdir()) == [
        "eval.jsonl",
        "manifest.json",
        "quarantine.jsonl",
        "report.json",
        "train.jsonl",
    ]
    # Read back as fine-tuning reads it.
    from qingliang.platform.lifecycle.finetune._data import parse_records

    assert len(parse_records(records, "records")) == 6


def test_instruction_csv_with_a_column_mapping(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    with open(folder / "qa.csv", "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.writer(fh)
        w.writerow(["qid", "question", "context", "answer", "category"])
        w.writerow(["1", "居住证怎么办理？", "", QUESTIONS[0][1], "户籍"])
        w.writerow(["2", "社保卡丢了怎么办？", "已经挂失", QUESTIONS[1][1], "社保"])
    (folder / "more.tsv").write_text("instruction\toutput\n驾驶证怎么换？\t线上申请换领。\n")
    ds = dataset(
        format="instruction",
        sources=[
            {
                "path": "qa.csv",
                "columns": {
                    "instruction": "question",
                    "input": "context",
                    "output": "answer",
                    "id": "qid",
                    "metadata": ["category"],
                },
            },
            {"path": "more.tsv"},
        ],
    )
    v = store.cut(ds, folder, actor="t")
    assert v.quarantined == 0
    first, second, third = store.read("gov-sft", v.version)
    assert first["instruction"] == "居住证怎么办理？" and "input" not in first
    assert first["metadata"] == {"source_id": "1", "category": "户籍"}
    assert second["input"] == "已经挂失"
    assert (third["instruction"], third["output"]) == ("驾驶证怎么换？", "线上申请换领。")


def test_a_column_mapping_the_file_lacks_fails_the_cut(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "qa.csv").write_text("q,a\nx,y\n")
    with pytest.raises(ResolveError, match=r"spec.sources\[0\]: qa.csv has no column"):
        store.cut(dataset(format="instruction", sources=[{"path": "qa.csv"}]), folder, "t")
    assert [e.action for e in store.audit("gov-sft")] == ["cut_failed"]


def test_parquet_records(store: DatasetStore, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "m"
    folder.mkdir()
    table = pa.table(
        {"instruction": ["居住证怎么办理？", "空答案", None], "output": ["到服务中心。", None, "x"]}
    )
    pq.write_table(table, folder / "qa.parquet")
    v = store.cut(dataset(format="instruction", sources=[{"path": "*.parquet"}]), folder, "t")
    assert [r["instruction"] for r in store.read("gov-sft", v.version)] == ["居住证怎么办理？"]
    rows = [(q["row"], q["reason"]) for q in store.quarantine("gov-sft", v.version)]
    assert rows == [(2, "missing field 'output'"), (3, "missing field 'instruction'")]


def test_parquet_without_pyarrow_says_what_to_install(
    store: DatasetStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(ResolveError, match="needs pyarrow: pip install pyarrow"):
        store.cut(dataset(sources=[{"path": "a.parquet"}]), folder, "t")


def test_missing_sources_are_errors_that_name_the_field(
    store: DatasetStore, tmp_path: Path
) -> None:
    with pytest.raises(ResolveError, match=r"spec.sources\[0\].path: 'nope/\*.jsonl' matches no"):
        store.cut(dataset(sources=[{"path": "nope/*.jsonl"}]), tmp_path, "t")
    with pytest.raises(ResolveError, match=r"spec.sources\[0\].path: 'x.jsonl': no such file"):
        store.check(dataset(sources=[{"path": "x.jsonl"}]), tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ResolveError, match="set `format`"):
        store.cut(dataset(sources=[{"path": "a.txt"}]), tmp_path, "t")


# ------------------------------------------------------------------------ quarantine


def test_malformed_records_go_to_the_quarantine_with_line_and_reason(
    store: DatasetStore, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    write_jsonl(
        folder / "train.jsonl",
        [
            chat(*QUESTIONS[0]),
            "{not json",
            "[1, 2]",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},
            {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            chat("   ", "答复"),
            {"messages": [{"role": "user", "content": "只有问题"}]},
            {"messages": "hello"},
            {"question": "x"},
            chat(*QUESTIONS[1]),
        ],
    )
    (folder / "extra.csv").write_text(
        f"instruction,input,output\n{QUESTIONS[2][0]},,{QUESTIONS[2][1]}\n只有两列,\n"
    )
    v = store.cut(
        dataset(sources=[{"path": "train.jsonl"}, {"path": "extra.csv"}]), folder, actor="t"
    )
    got = [(q["source"], q["line"], q["step"], q["reason"]) for q in store.quarantine("gov-sft")]
    assert got == [
        ("train.jsonl", 2, "read", got[0][3]),
        ("train.jsonl", 3, "read", "a record must be a JSON object, got list"),
        ("train.jsonl", 4, "read", "messages[1]: missing field 'content'"),
        ("train.jsonl", 8, "read", "messages: must be a non-empty list, got str"),
        ("train.jsonl", 9, "read", got[4][3]),
        ("extra.csv", 3, "read", "row has 2 cells, the header has 3"),
        (
            "train.jsonl",
            5,
            "schema",
            "messages[0].role: 'bot' is not one of system, user, assistant",
        ),
        ("train.jsonl", 6, "schema", "messages[0].content: is empty"),
        ("train.jsonl", 7, "schema", "messages: no assistant message to learn from"),
    ]
    assert got[0][3].startswith("invalid JSON:") and "neither a chat record" in got[4][3]
    q = store.quarantine("gov-sft")
    assert (
        q[0]["raw"] == "{not json" and q[6]["id"] and q[6]["record"]["messages"][0]["role"] == "bot"
    )
    report = store.report("gov-sft")
    # Nothing is silently dropped: every row read is stored or quarantined.
    assert report["read"]["rows"] == 12 == v.records + v.quarantined
    assert report["steps"][0]["reasons"] == {
        "empty content": 1,
        "no assistant message": 1,
        "wrong role": 1,
    }
    assert report["read"]["ignored_fields"] == {}


def test_instruction_datasets_quarantine_what_they_cannot_hold(
    store: DatasetStore, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    multi = chat("a", "b")
    multi["messages"] += [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    system = chat("a", "b")
    system["messages"].insert(0, {"role": "system", "content": "你是助手"})
    write_jsonl(folder / "train.jsonl", [chat(*QUESTIONS[0]), multi, system])
    store.cut(dataset(format="instruction"), folder, "t")
    reasons = [q["reason"] for q in store.quarantine("gov-sft")]
    assert reasons == [
        "a 4-message conversation (user, assistant, user, assistant) cannot be an instruction "
        "record: it needs one user and one assistant message",
        "a system message cannot be kept in an instruction record",
    ]


def test_a_cut_that_keeps_no_record_is_refused_with_the_reasons(
    store: DatasetStore, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    no_answer = {"messages": [{"role": "user", "content": "有人吗？"}]}
    write_jsonl(folder / "train.jsonl", ["{not json", "[1, 2]", "{oops", no_answer, no_answer])
    with pytest.raises(ResolveError) as err:
        store.cut(dataset(governance=[{"step": "schema"}]), folder, "t")
    message = str(err.value)
    assert message.startswith(
        "dataset gov-sft: no record is left to store, so no version was cut "
        "(5 rows read from 1 file(s)); dropped by reason: "
    ), message
    assert "read: invalid JSON: Expecting property name enclosed in double quotes (2)" in message
    assert "read: a record must be a JSON object, got list (1)" in message
    assert "schema: no assistant message (2)" in message
    with pytest.raises(NotFound):
        store.get("gov-sft")
    assert not (store.root / "gov-sft" / "versions").exists()
    assert [e.action for e in store.audit("gov-sft")] == ["cut_failed"]

    # Its only record deleted, a dataset's next cut is refused too; the version the
    # deletion left stays the latest.
    write_jsonl(folder / "train.jsonl", [chat(*QUESTIONS[0])])
    first = store.cut(dataset(governance=[{"step": "dedup"}]), folder, "t")
    rid = store.read("gov-sft", first.version)[0]["id"]
    latest = store.delete_record("gov-sft", rid, actor="t", reason="gdpr").superseded
    with pytest.raises(ResolveError, match=r"deleted: the record was deleted \(tombstoned\) \(1\)"):
        store.cut(dataset(governance=[{"step": "dedup"}]), folder, "t")
    assert store.get("gov-sft").version == latest[first.version]
    write_jsonl(folder / "empty.jsonl", [])
    with pytest.raises(
        ResolveError, match=r"\(0 rows read from 1 file\(s\)\): the sources hold no"
    ):
        store.cut(dataset(sources=[{"path": "empty.jsonl"}]), folder, "t")


def test_an_empty_eval_split_is_cut_with_a_warning(
    store: DatasetStore, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v = store.cut(dataset(split={"eval_fraction": 1e-6}), src, "t")
    assert (v.train, v.eval) == (6, 0)
    (warning,) = v.warnings
    assert warning.startswith("dataset gov-sft: the eval split is empty (split.eval_fraction 1e-06")
    assert store.report("gov-sft")["warnings"] == [warning]
    assert warning in caplog.text  # the CLI prints WARNING records
    # No eval split asked for, none warned about.
    assert store.cut(dataset("plain"), src, "t").warnings == ()


# ----------------------------------------------------------------------- governance


def test_pii_is_redacted_in_the_stored_version_and_counted(
    store: DatasetStore, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    write_jsonl(
        folder / "train.jsonl",
        [
            chat("我的电话是13800138000，邮箱 li@example.com", "已记录，会致电 138-0013-8000。"),
            chat("工号QL-004211 的社保", QUESTIONS[1][1]),
            chat(*QUESTIONS[2]),
            '{"broken": 13900139000',
        ],
    )
    ds = dataset(
        governance=[
            {"step": "pii", "patterns": [{"kind": "staff_id", "regex": "QL-\\d{6}"}]},
        ]
    )
    v = store.cut(ds, folder, "t")
    text = json.dumps(store.read("gov-sft", v.version), ensure_ascii=False)
    assert "13800138000" not in text and "li@example.com" not in text and "004211" not in text
    assert "[PHONE]" in text and "[EMAIL]" in text and "[STAFF_ID]" in text
    (pii,) = store.report("gov-sft")["steps"]
    assert pii["findings"] == {
        "email": {"redacted": 1, "records": 1},
        "phone_cn": {"redacted": 2, "records": 1},
        "staff_id": {"redacted": 1, "records": 1},
    }
    assert (pii["records_changed"], pii["in"], pii["out"]) == (2, 3, 3)
    # The quarantine keeps an excerpt of the bad line, redacted too.
    (bad,) = store.quarantine("gov-sft")
    assert bad["raw"] == '{"broken": [PHONE]'


def test_pii_hash_mode_reads_the_salt_from_the_environment(
    store: DatasetStore, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    write_jsonl(folder / "train.jsonl", [chat("电话13800138000", "好的，13800138000 已登记。")])
    ds = dataset(governance=[{"step": "pii", "mode": "hash", "salt_env": "QL_SALT"}])
    store.cut(ds, folder, "t")
    (rec,) = store.read("gov-sft")
    user, answer = (m["content"] for m in rec["messages"])
    token = user.removeprefix("电话")
    assert token.startswith("[PHONE:") and token in answer
    other = DatasetStore(tmp_path / "other", env={})
    with pytest.raises(ResolveError, match=r"governance\[0\].salt_env: .*QL_SALT is not set"):
        other.cut(ds, folder, "t")
    assert not (tmp_path / "other" / "gov-sft").exists()


def test_duplicates_are_removed_with_reasons(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    long_answer = (
        "请携带本人身份证、近期免冠照片以及租房合同或房产证明，到居住地所在街道的政务服务中心"
        "提交居住证申请，审核通过后五个工作日内即可领取。"
    )
    write_jsonl(
        folder / "train.jsonl",
        [
            chat("居住证怎么办理？", long_answer),
            chat("居住证怎么办理？", long_answer),  # exact: same text
            chat("居住证怎么办理？ ", long_answer),  # exact after normalisation, another id
            chat("居住证怎么办理？", long_answer.replace("五个", "5个")),  # near
            chat(*QUESTIONS[1]),
        ],
    )
    store.cut(dataset(governance=[{"step": "dedup"}]), folder, "t")
    records = store.read("gov-sft")
    assert len(records) == 2
    (dedup,) = store.report("gov-sft")["steps"]
    assert dedup["removed"] == {"exact": 2, "near": 1}
    first = records[0]["id"]
    assert {e["duplicate_of"] for e in dedup["examples"]} == {first}
    near = [e for e in dedup["examples"] if e["reason"] == "near"]
    assert near and 0.8 <= near[0]["similarity"] < 1.0


def test_steps_run_in_order_and_can_be_disabled(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    # Two records differing only in a phone number become identical once redacted.
    write_jsonl(
        folder / "train.jsonl",
        [
            chat("请回电13800138000", "好的，稍后回电。"),
            chat("请回电13900139000", "好的，稍后回电。"),
        ],
    )
    pii_first = dataset(governance=[{"step": "pii"}, {"step": "dedup"}])
    assert store.cut(pii_first, folder, "t").records == 1
    dedup_first = dataset(governance=[{"step": "dedup"}, {"step": "pii"}])
    assert store.cut(dedup_first, folder, "t").records == 2
    off = dataset(governance=[{"step": "pii", "enabled": False}, {"step": "dedup"}])
    v = store.cut(off, folder, "t")
    assert v.records == 2 and "13800138000" in json.dumps(store.read("gov-sft"))
    assert store.report("gov-sft")["steps"][0] == {
        "step": "pii",
        "enabled": False,
        "in": 2,
        "out": 2,
    }


def test_quality_counts_removals_per_rule(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_jsonl(
        folder / "train.jsonl",
        [chat(*QUESTIONS[0]), chat("好", "好的好的好的好的好的好的好的好的"), chat(*QUESTIONS[3])],
    )
    ds = dataset(governance=[{"step": "quality", "languages": ["zh"], "scope": "output"}])
    v = store.cut(ds, folder, "t")
    assert v.records == 1
    (quality,) = store.report("gov-sft")["steps"]
    assert quality["removed"] == {"language": 1, "repetition": 1}
    assert all(e["reasons"] for e in quality["examples"])


def test_gateway_logs_and_corrections(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_jsonl(folder / "train.jsonl", [chat(*QUESTIONS[0]), chat(*QUESTIONS[1])])
    write_jsonl(
        folder / "gw.jsonl",
        [
            {
                "messages": [{"role": "user", "content": QUESTIONS[2][0]}],
                "response": QUESTIONS[2][1],
                "tenant": "city-a",
                "model": "qwen",
                "id": "req-1",
            },
            {
                "messages": [{"role": "user", "content": "别的租户"}],
                "response": "x",
                "tenant": "city-b",
                "model": "qwen",
            },
        ],
    )
    # Record ids are keyed per store: take the target from this store's own cut.
    plain = store.cut(dataset(), folder, "t")
    target = store.read("gov-sft", plain.version)[1]["id"]
    write_jsonl(
        folder / "fix.jsonl",
        [
            {"record_id": target, "output": "更正：可在线上挂失并补办。", "reviewer": "wang"},
            {
                "messages": [{"role": "user", "content": QUESTIONS[4][0]}],
                "output": QUESTIONS[4][1],
                "reviewer": "li",
            },
            {"record_id": "0" * 24, "output": "x", "reviewer": "li"},
            {"record_id": target, "output": "no reviewer"},
        ],
    )
    ds = dataset(
        sources=[
            {"path": "train.jsonl"},
            {"path": "gw.jsonl", "kind": "gateway_logs", "tenants": ["city-a"]},
            {"path": "fix.jsonl", "kind": "corrections"},
        ]
    )
    v = store.cut(ds, folder, "t")
    records = store.read("gov-sft", v.version)
    assert [r["messages"][-1]["content"] for r in records] == [
        QUESTIONS[0][1],
        "更正：可在线上挂失并补办。",
        QUESTIONS[2][1],
        QUESTIONS[4][1],
    ]
    assert records[1]["metadata"] == {"corrected_by": "wang", "corrects": target}
    assert records[2]["metadata"] == {
        "origin": "gateway",
        "tenant": "city-a",
        "model": "qwen",
        "source_id": "req-1",
    }
    assert records[3]["metadata"] == {"corrected_by": "li", "origin": "correction"}
    report = store.report("gov-sft")
    assert report["corrections"] == {"replaced": 1, "added": 1, "quarantined": 2, "overridden": 0}
    assert report["sources"][1]["filtered"] == 1
    reasons = [q["reason"] for q in store.quarantine("gov-sft")]
    assert reasons == [
        f"record_id {'0' * 24!r} is not a record of the sources",
        "missing field 'reviewer' (who made the correction)",
    ]


# --------------------------------------------------------------- versions and storage


def test_version_ids_are_content_addressed(store: DatasetStore, src: Path, tmp_path: Path) -> None:
    v1 = store.cut(dataset(), src, "a")
    again = store.cut(dataset(), src, "b")
    assert again.version == v1.version and again.actor == "a"
    assert len(list((store.root / "gov-sft" / "versions").iterdir())) == 1
    assert [e.details["unchanged"] for e in store.audit("gov-sft")] == [False, True]
    # The same records from a renamed file: the same version.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "renamed.jsonl").write_bytes((src / "train.jsonl").read_bytes())
    assert store.cut(dataset(sources=[{"path": "renamed.jsonl"}]), moved, "c").version == v1.version
    # One changed record: a new version.
    rows = [chat(q, a) for q, a in QUESTIONS]
    rows[3] = chat(QUESTIONS[3][0], "Apply at the service portal.")
    write_jsonl(src / "train.jsonl", rows)
    v2 = store.cut(dataset(), src, "a")
    assert v2.version != v1.version
    # Other governance settings over the same records: another version.
    v3 = store.cut(dataset(governance=[{"step": "schema"}]), src, "a")
    assert v3.version not in (v1.version, v2.version)
    assert [v.version for v in store.versions("gov-sft")] == [v3.version, v2.version, v1.version]
    assert store.get("gov-sft").version == v3.version
    assert store.get("gov-sft", v2.version.removeprefix(PREFIX)[:10]).version == v2.version


def test_split_is_deterministic_by_record_hash(store: DatasetStore, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_jsonl(
        folder / "train.jsonl", [chat(f"问题{i}：{q}", a) for i, (q, a) in enumerate(QUESTIONS * 5)]
    )
    ds = dataset(split={"eval_fraction": 0.3, "seed": 1}, governance=[])
    v = store.cut(ds, folder, "t")
    train, evals = store.read("gov-sft", v.version), store.read("gov-sft", v.version, "eval")
    assert 0 < len(evals) < len(train) and v.records == 30
    assert not {r["id"] for r in train} & {r["id"] for r in evals}
    assert store.read("gov-sft", split="all") == train + evals
    v_other = store.cut(
        dataset(split={"eval_fraction": 0.3, "seed": 2}, governance=[]), folder, "t"
    )
    assert {r["id"] for r in store.read("gov-sft", v_other.version, "eval")} != {
        r["id"] for r in evals
    }
    assert store.cut(ds, folder, "t").version == v.version


def test_earlier_versions_never_change(
    store: DatasetStore, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = store.cut(dataset(), src, "t")
    assert v1.path is not None
    before = snapshot(v1.path)
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in v1.path.iterdir())
    assert all((p.stat().st_mode & 0o222) == 0 for p in v1.path.iterdir())
    # A later cut.
    write_jsonl(
        src / "train.jsonl", [chat(q, a) for q, a in QUESTIONS] + [chat("新问题", "新答复")]
    )
    v2 = store.cut(dataset(), src, "t")
    assert snapshot(v1.path) == before
    # A cut failing while it writes: no half version, no temp folder, v1 and v2 as they were.
    write_jsonl(src / "train.jsonl", [chat("再一个问题", "再一个答复")])
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.cut(dataset(), src, "t")
    monkeypatch.setattr(store_mod.os, "fsync", real_fsync)
    assert [v.version for v in store.versions("gov-sft")] == [v2.version, v1.version]
    assert not list((store.root / "gov-sft" / ".tmp").iterdir())
    assert len(list((store.root / "gov-sft" / "versions").iterdir())) == 2
    assert snapshot(v1.path) == before
    # A deletion of a record only v2 holds.
    (new_record,) = [
        r
        for r in store.read("gov-sft", v2.version)
        if "新问题" in json.dumps(r, ensure_ascii=False)
    ]
    result = store.delete_record("gov-sft", new_record["id"], actor="dpo", reason="request")
    assert list(result.superseded) == [v2.version]
    assert snapshot(v1.path) == before


def test_a_failed_registration_leaves_no_files(
    store: DatasetStore, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = store.cut(dataset(), src, "t")
    write_jsonl(src / "train.jsonl", [chat("新问题", "新答复")])

    def broken(*args: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(DatasetStore, "_insert_version", broken)
    with pytest.raises(sqlite3.OperationalError):
        store.cut(dataset(), src, "t")
    assert [p.name for p in (store.root / "gov-sft" / "versions").iterdir()] == [
        v1.version.removeprefix(PREFIX)
    ]
    assert store.get("gov-sft").version == v1.version


def test_leftovers_of_a_crash_are_swept(store: DatasetStore, src: Path) -> None:
    v1 = store.cut(dataset(), src, "t")
    assert v1.path is not None
    before = snapshot(v1.path)
    (store.root / "gov-sft" / ".tmp" / "half").mkdir(parents=True)
    (store.root / "gov-sft" / ".tmp" / "half" / "train.jsonl").write_text("{")
    orphan = store.root / "gov-sft" / "versions" / ("ab" * 32)
    orphan.mkdir()
    store.cut(dataset(), src, "t")
    assert not (store.root / "gov-sft" / ".tmp").exists() and not orphan.exists()
    assert snapshot(v1.path) == before


# -------------------------------------------------------------------------- deletion


def test_deletion_supersedes_every_version_holding_the_record(
    store: DatasetStore, src: Path
) -> None:
    v1 = store.cut(dataset(), src, "t")
    write_jsonl(
        src / "train.jsonl",
        [chat(q, a) for q, a in QUESTIONS] + [chat("带\u2028分隔符的问题", "答复\u2029")],
    )
    v2 = store.cut(dataset(), src, "t")
    doomed = store.read("gov-sft", v1.version)[1]["id"]
    assert v2.path is not None
    old_lines = (v2.path / "train.jsonl").read_bytes().split(b"\n")
    result = store.delete_record("gov-sft", doomed, actor="dpo", reason="citizen request #17")
    assert result.record_id == doomed and set(result.superseded) == {v1.version, v2.version}
    new2 = store.get("gov-sft", result.superseded[v2.version])
    assert new2.latest and new2.records == v2.records - 1 and new2.path is not None
    # Every other line is kept byte for byte.
    kept = (new2.path / "train.jsonl").read_bytes().split(b"\n")
    assert kept == [ln for ln in old_lines if doomed.encode() not in ln]
    assert doomed not in json.dumps(store.read("gov-sft", split="all"))
    # The old versions' files are gone and their rows say why.
    old = {v.version: v for v in store.versions("gov-sft")}
    for version in (v1.version, v2.version):
        assert old[version].status == "superseded"
        assert old[version].superseded_by == result.superseded[version]
        assert "citizen request #17" in old[version].reason and old[version].path is None
        assert not store._dir("gov-sft", version).exists()
    with pytest.raises(NotFound, match="superseded by"):
        store.read("gov-sft", v1.version)
    assert store.report("gov-sft")["deletions"][0]["record_ids"] == [doomed]
    actions = [(e.action, e.actor) for e in store.audit("gov-sft")]
    assert actions[-3:] == [("delete", "dpo"), ("supersede", "dpo"), ("supersede", "dpo")]
    # The record stays out of later cuts, though the source still holds it.
    v3 = store.cut(dataset(), src, "t")
    assert v3.version == new2.version
    assert store.tombstones("gov-sft") == [doomed]
    assert store.report("gov-sft")["tombstoned"]["removed"] == 0  # unchanged: old report kept


def test_delete_by_match_and_its_errors(store: DatasetStore, src: Path) -> None:
    store.cut(dataset(), src, "t")
    result = store.delete_record("gov-sft", match="社保卡", actor="dpo", reason="test")
    assert len(result.record_ids) == 1 and len(result.superseded) == 1
    with pytest.raises(NotFound):
        store.delete_record("gov-sft", match="社保卡", actor="dpo", reason="again")
    with pytest.raises(BadRequest):
        store.delete_record("gov-sft", actor="dpo", reason="x")
    with pytest.raises(BadRequest):
        store.delete_record("gov-sft", "a", match="b", actor="dpo", reason="x")
    with pytest.raises(BadRequest, match="reason"):
        store.delete_record("gov-sft", result.record_id, actor="dpo", reason=" ")
    with pytest.raises(NotFound, match="in no stored version"):
        store.delete_record("gov-sft", "f" * 24, actor="dpo", reason="x")
    # Deleting again is a no-op.
    again = store.delete_record("gov-sft", result.record_id, actor="dpo", reason="x")
    assert again.superseded == {}
    with pytest.raises(NotFound):
        store.delete_record("nope", "x", actor="dpo", reason="x")


def test_deleting_a_record_also_deletes_its_corrections(store: DatasetStore, src: Path) -> None:
    plain = store.cut(dataset(), src, "t")
    target = store.read("gov-sft", plain.version)[0]["id"]
    write_jsonl(src / "fix.jsonl", [{"record_id": target, "output": "更正", "reviewer": "w"}])
    ds = dataset(sources=[{"path": "train.jsonl"}, {"path": "fix.jsonl", "kind": "corrections"}])
    corrected = store.cut(ds, src, "t")
    result = store.delete_record("gov-sft", target, actor="dpo", reason="request")
    assert set(result.superseded) == {plain.version, corrected.version}
    assert len(result.record_ids) == 2
    # A new cut leaves out the record and its correction: the same content as the copy.
    again = store.cut(ds, src, "t")
    assert again.version == result.superseded[corrected.version] and again.records == 5
    assert "更正" not in json.dumps(store.read("gov-sft"), ensure_ascii=False)
    other = store.cut(dataset(sources=ds.spec.model_dump()["sources"], governance=[]), src, "t")
    assert store.report("gov-sft", other.version)["tombstoned"]["removed"] == 1


# ------------------------------------------------------------------ retention, audit


def test_retention_keeps_the_latest(store: DatasetStore, src: Path, clock: Clock) -> None:
    ds = dataset(retention={"max_versions": 2})
    made = []
    for i in range(4):
        write_jsonl(src / "train.jsonl", [chat(q, a) for q, a in QUESTIONS[: i + 2]])
        made.append(store.cut(ds, src, "t").version)
    status = {v.version: v.status for v in store.versions("gov-sft")}
    assert [status[m] for m in made] == ["removed", "removed", "active", "active"]
    assert not store._dir("gov-sft", made[0]).exists()
    # Age: everything older than a day goes, except the latest.
    clock.now += 3 * 86400
    write_jsonl(src / "train.jsonl", [chat(q, a) for q, a in QUESTIONS])
    aged = dataset(retention={"max_age_days": 1})
    latest = store.cut(aged, src, "t").version
    assert store.apply_retention("gov-sft") == []
    clock.now += 3 * 86400
    assert store.apply_retention("gov-sft") == []  # only the latest is left, and it stays
    assert [v.version for v in store.versions("gov-sft") if v.status == "active"] == [latest]
    reasons = [e.details["reason"] for e in store.audit("gov-sft") if e.action == "retention"]
    assert reasons.count("retention: max_versions 2") == 2
    assert "retention: older than max_age_days 1" in reasons


def test_audit_is_queryable_and_append_only(store: DatasetStore, src: Path, clock: Clock) -> None:
    store.cut(dataset(), src, "alice")
    mark = clock.now + 0.5
    store.cut(dataset("other"), src, "bob")
    assert [(e.name, e.actor, e.action) for e in store.audit()] == [
        ("gov-sft", "alice", "cut"),
        ("other", "bob", "cut"),
    ]
    assert [e.name for e in store.audit(since=mark)] == ["other"]
    assert [e.actor for e in store.audit("gov-sft")] == ["alice"]
    conn = sqlite3.connect(store.root / "datasets.sqlite")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET actor='mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit")
    finally:
        conn.close()


def test_remove_forgets_the_dataset_but_keeps_audit_and_tombstones(
    store: DatasetStore, src: Path
) -> None:
    v = store.cut(dataset(), src, "t")
    rid = store.read("gov-sft", v.version)[0]["id"]
    store.delete_record("gov-sft", rid, actor="dpo", reason="r")
    store.remove("gov-sft", actor="ops")
    assert not (store.root / "gov-sft").exists() and store.names() == []
    with pytest.raises(NotFound):
        store.versions("gov-sft")
    assert store.audit("gov-sft")[-1].action == "remove"
    assert store.tombstones("gov-sft") == [rid]
    with pytest.raises(NotFound):
        store.remove("gov-sft", actor="ops")


def test_record_ids_are_keyed_per_store(tmp_path: Path, src: Path) -> None:
    a = DatasetStore(tmp_path / "a")
    b = DatasetStore(tmp_path / "b")
    ids_a = [r["id"] for r in a.read("gov-sft", a.cut(dataset(), src, "t").version)]
    ids_b = [r["id"] for r in b.read("gov-sft", b.cut(dataset(), src, "t").version)]
    assert ids_a != ids_b
    assert ids_a == [r["id"] for r in a.read("gov-sft", a.cut(dataset(), src, "t").version)]


# ------------------------------------------------------------------------ controller


def test_apply_cuts_a_version_and_delete_removes_it(tmp_path: Path, src: Path) -> None:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "Dataset",
        "metadata": {"name": "gov-sft"},
        "spec": {"sources": [{"path": "train.jsonl"}]},
    }
    path = src / "ds.yaml"
    path.write_text(yaml.safe_dump(doc))
    ctl = Controller(Settings(home=tmp_path / "home"))
    (change,) = ctl.apply([path], wait=False)
    assert (change.kind, change.name, change.action) == ("Dataset", "gov-sft", "create")
    summary = [f for f in change.fields if f.startswith("version sha256:")]
    assert len(summary) == 1  # the cut's summary, then its warnings, if any
    after = change.fields[change.fields.index(summary[0]) + 1 :]
    assert all(f.startswith("warning: ") for f in after), change.fields
    store = DatasetStore.for_home(tmp_path / "home")
    assert store.get("gov-sft").records == 6
    assert [c.action for c in ctl.apply([path], wait=False)] == ["unchanged"]
    write_jsonl(src / "train.jsonl", [chat(*QUESTIONS[0])])
    assert [c.action for c in ctl.apply([path], wait=False)] == ["cut"]
    assert ctl.delete(["gov-sft"], kind="Dataset") == ["gov-sft"]
    assert store.names() == [] and ctl.store.get("Dataset", "gov-sft") is None
    with pytest.raises(NotFound):
        ctl.delete(["gov-sft"], kind="Dataset")


def test_apply_with_a_missing_source_changes_nothing(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "qingliang.io/v1",
        "kind": "Dataset",
        "metadata": {"name": "gov-sft"},
        "spec": {"sources": [{"path": "missing/*.jsonl"}]},
    }
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(doc))
    ctl = Controller(Settings(home=tmp_path / "home"))
    with pytest.raises(ResolveError, match=r"ds.yaml: spec.sources\[0\].path"):
        ctl.apply([path], wait=False)
    assert ctl.store.get("Dataset", "gov-sft") is None


def test_the_example_dataset_cuts(tmp_path: Path) -> None:
    path = REPO / "deploy" / "examples" / "dataset-gov.yaml"
    ds = yaml.safe_load(path.read_text(encoding="utf-8"))
    store = DatasetStore(tmp_path / "ds", env={"QL_DEMO_PII_SALT": "demo"})
    v = store.cut(Dataset.model_validate(ds), path.parent, "t")
    assert v.records > 0 and v.quarantined > 0
    report = store.report(ds["metadata"]["name"])
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["pii"]["findings"] and steps["dedup"]["removed"]["exact"] > 0
