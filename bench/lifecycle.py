"""Lifecycle benchmark: data-governance throughput, and LoRA / QLoRA step time and memory.

**(a) Governance** (:func:`governance_bench`). Chat records generated deterministically
by ``bench/_corpus.py``'s ``generate`` (``--seed``; the mix is described there): about 300
characters each, 50 % Chinese government-service Q&A, 30 % English, 20 % Chinese technical
support; 15 % carry PII, 5 % are exact and 5 % near duplicates of an earlier record, 3 % are
low quality and 0.5 % malformed lines. At each ``--sizes`` count it times, alone on the
parsed records: PII scan + redaction (:class:`PiiScanner`, tag mode, every message), dedup
(:class:`Deduplicator`: exact + MinHash near, threshold 0.8, 128 permutations, on the whole
conversation) and the quality filter (:class:`QualityFilter`); and end to end, a
:meth:`DatasetStore.cut` of the JSONL file through a ``Dataset`` manifest (read, record ids,
schema, PII, dedup, quality, split, write, register) into a fresh store. Each time is the
median of ``--repeats`` runs. What each step removed or changed is reported next to what
was injected, as a sanity check.

**(b) Fine-tuning** (:func:`finetune_bench`). ``bench/_finetune.py``'s ``measure``: the
shared LoRA / QLoRA loop, each (model, method) in a fresh ``spawn`` process so the peak RSS
is that case's alone, on the tiny random Llama (``build_tiny_llama``) and the packaged
Qwen2.5-Coder-0.5B (HF copy under ``$QINGLIANG_HOME/models``). Step time is the median of
the measured steps after the warm-up ones, on one torch thread by default (``--threads``):
on a shared machine a second thread mostly waits for a core, and a step of the tiny model
took about 40x longer with two. RSS is taken at the end of every step, after the process gave
the heap that loading left free back to the OS once (``malloc_trim``, at the end of the
first step); the peak is the process's high-water mark (set while loading).

Raw results go to ``bench/out/lifecycle.json`` (``--out``) and the ``## Lifecycle``
section of ``bench/RESULTS.md`` is rewritten; ``--quick`` prints the section instead and
writes ``bench/out/lifecycle-quick.json``. ``--skip-governance`` keeps the governance
figures of the earlier result in ``--out`` (and says so in the section).

Usage (times on 2 shared cores):
    $ .venv/bin/python bench/lifecycle.py --quick              # smoke run, ~40 s
    $ .venv/bin/python bench/lifecycle.py                      # everything, ~6 min
    $ .venv/bin/python bench/lifecycle.py --skip-0.5b          # governance + tiny model, ~3 min
    $ .venv/bin/python bench/lifecycle.py --skip-governance    # fine-tuning only, ~2.5 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import BLOCKED, generate  # noqa: E402
from _finetune import measure  # noqa: E402
from _load import git_info, machine, versions  # noqa: E402
from _results import fmt, pct, save_json, write_section  # noqa: E402

logger = logging.getLogger("bench.lifecycle")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
OUT = REPO / "bench" / "out" / "lifecycle.json"
QUICK_OUT = REPO / "bench" / "out" / "lifecycle-quick.json"
QWEN = "qwen2.5-coder-0.5b-instruct"
SHARED_LOAD = 1.5  # load average above which the run is marked as shared

# Dataset manifest of the end-to-end cut; the steps alone use the same settings.
MANIFEST: dict[str, Any] = {
    "apiVersion": "qingliang.io/v1",
    "kind": "Dataset",
    "metadata": {"name": "bench-lifecycle"},
    "spec": {
        "format": "chat",
        "sources": [{"path": "records.jsonl"}],
        "governance": [
            {"step": "schema", "require_assistant_last": True},
            {"step": "pii", "mode": "tag"},
            {"step": "dedup", "threshold": 0.8},
            {"step": "quality", "min_chars": 10, "languages": ["zh", "en"],
             "blocked_terms": list(BLOCKED)},
        ],
        "split": {"eval_fraction": 0.05, "seed": 0},
    },
}  # fmt: skip


# -- governance ------------------------------------------------------------------------------
def _conversation_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _rate(n: int, times: list[float]) -> dict[str, Any]:
    median = statistics.median(times)
    return {"s": [round(t, 4) for t in times], "s_median": median, "records_per_s": n / median}


def governance_size(n: int, seed: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """One size: the three steps alone, then the whole cut (see the module docstring)."""
    from qingliang.platform.lifecycle.data.dedup import Deduplicator
    from qingliang.platform.lifecycle.data.manifest import Dataset, DedupStep, PiiStep, QualityStep
    from qingliang.platform.lifecycle.data.pii import PiiScanner
    from qingliang.platform.lifecycle.data.quality import QualityFilter
    from qingliang.platform.lifecycle.data.store import DatasetStore

    t0 = time.perf_counter()
    gen = generate(n, seed)
    generate_s = time.perf_counter() - t0
    dataset = Dataset.model_validate(MANIFEST)
    spec = dataset.spec
    pii_step, dedup_step, quality_step = spec.step("pii"), spec.step("dedup"), spec.step("quality")
    assert isinstance(pii_step, PiiStep) and isinstance(dedup_step, DedupStep)
    assert isinstance(quality_step, QualityStep)
    records, convs = gen.records, [_conversation_text(r) for r in gen.records]
    out: dict[str, Any] = {"n": n, "records": len(records), "generate_s": generate_s}
    out["injected"] = {
        **gen.counts,
        "pii_records": sum(p for p, k in zip(gen.pii, gen.kinds, strict=True) if k != "malformed"),
    }
    out["chars_per_record"] = statistics.fmean(len(c) for c in convs)

    scanner = PiiScanner(kinds=pii_step.kinds, mode=pii_step.mode)

    def pii() -> int:
        changed = 0
        for rec in records:
            found = False
            for m in rec["messages"]:
                found |= bool(scanner.redact(m["content"]).findings)
            changed += found
        return changed

    logger.info("governance %d: PII", n)
    times, changed = _timed(pii, repeats)
    out["pii"] = {**_rate(len(records), times), "records_changed": changed}

    logger.info("governance %d: dedup", n)
    times, decisions = _timed(
        lambda: Deduplicator(dedup_step.settings()).run((str(i), t) for i, t in enumerate(convs)),
        repeats,
    )
    removed = Counter(d.reason for d in decisions if not d.kept)
    out["dedup"] = {
        **_rate(len(records), times),
        "removed": {k: removed[k] for k in ("exact", "near")},
    }
    truth = [k for k in gen.kinds if k != "malformed"]
    flaws = [f for k, f in zip(gen.kinds, gen.flaws, strict=True) if k != "malformed"]
    out["dedup"]["removed_by_kind"] = dict(
        Counter(k for k, d in zip(truth, decisions, strict=True) if not d.kept)
    )

    logger.info("governance %d: quality", n)
    check = QualityFilter(quality_step.settings()).check
    times, reasons = _timed(lambda: [check(t) for t in convs], repeats)
    rules = Counter(r.partition(":")[0] for rs in reasons for r in rs)
    out["quality"] = {
        **_rate(len(records), times),
        "removed": sum(1 for rs in reasons if rs),
        "by_rule": dict(sorted(rules.items())),
        "removed_by_kind": dict(Counter(k for k, rs in zip(truth, reasons, strict=True) if rs)),
        "injected_flaws": dict(Counter(f for f in flaws if f)),
        "removed_flaws": dict(Counter(f for f, rs in zip(flaws, reasons, strict=True) if f and rs)),
    }

    folder = tmp / f"source-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_text("\n".join(gen.lines) + "\n", encoding="utf-8")
    cut_times, version = [], None
    for i in range(repeats):
        logger.info("governance %d: cut %d/%d", n, i + 1, repeats)
        store = DatasetStore(tmp / f"store-{n}-{i}", env={})
        t0 = time.perf_counter()
        version = store.cut(dataset, folder, actor="bench")
        cut_times.append(time.perf_counter() - t0)
    assert version is not None
    report = store.report(dataset.name, version.version)
    out["cut"] = {
        **_rate(n, cut_times),
        "read": report["read"],
        "steps": [{k: v for k, v in s.items() if k != "examples"} for s in report["steps"]],
        "records": report["records"],
        "train": report["split"]["train"],
        "eval": report["split"]["eval"],
        "quarantined": report["quarantined"],
    }
    steps_alone = sum(out[k]["s_median"] for k in ("pii", "dedup", "quality"))
    out["steps_alone_s"] = steps_alone
    out["steps_alone_records_per_s"] = len(records) / steps_alone
    return out


def governance_bench(sizes: list[int], seed: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qingliang-bench-lifecycle-") as tmp:
        runs = [governance_size(n, seed, repeats, Path(tmp)) for n in sizes]
    return {"seed": seed, "repeats": repeats, "manifest": MANIFEST, "sizes": runs}


# -- fine-tuning -----------------------------------------------------------------------------
def qwen_dir(home: Path) -> Path:
    """The packaged Qwen2.5-Coder-0.5B as a HF directory (converted on first use, ~1 min)."""
    from qingliang.serving.sources import resolve_source

    return resolve_source(f"packaged:{QWEN}", home / "models", progress=False)


@dataclass(frozen=True)
class Case:
    """A model's fine-tuning shape: optimizer steps (warm-up, measured) and batch."""

    label: str
    warmup: int
    measured: int
    batch_size: int
    seq_len: int


def finetune_bench(
    tiny: Case, big: Case | None, home: Path, threads: int, methods: tuple[str, ...]
) -> dict[str, Any]:
    """Every (model, method) in its own process; a failing case is recorded, not fatal."""
    from qingliang.serving.tiny_model import build_tiny_llama

    cases: list[dict[str, Any]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qingliang-bench-tiny-") as tmp:
        models: list[tuple[Case, Path]] = [(tiny, build_tiny_llama(Path(tmp) / "tiny-llama"))]
        if big is not None:
            try:
                models.append((big, qwen_dir(home)))
            except Exception as exc:  # not installed, or the conversion failed
                skipped.append(f"{QWEN}: {type(exc).__name__}: {exc}")
        for case, path in models:
            for method in methods:
                logger.info("fine-tuning: %s %s", case.label, method)
                try:
                    res = measure(
                        path,
                        method,
                        steps=case.warmup + case.measured,
                        seq_len=case.seq_len,
                        batch_size=case.batch_size,
                        threads=threads,
                        warmup=case.warmup,
                        timeout_s=1200,
                    )
                except RuntimeError as exc:
                    skipped.append(f"{case.label} {method}: {exc}")
                    continue
                cases.append({"label": case.label, **res})
    return {"threads": threads, "cases": cases, "skipped": skipped}


# -- report ----------------------------------------------------------------------------------
def _load(p: dict[str, Any], of: str = "") -> str:
    """``load average a → b`` (1 min) of a part, marked when either is above 1.5."""
    start, end = p.get("loadavg_start") or [0.0], p.get("loadavg_end") or [0.0]
    shared = max(start[0], end[0]) > SHARED_LOAD
    return f"load average{of} {start[0]:.2f} → {end[0]:.2f}" + (
        " (**machine shared with other work**)" if shared else ""
    )


def _when(p: dict[str, Any]) -> str:
    """When a part ran: its date, wall time, load; and the command, if an earlier run's."""
    earlier = p.get("earlier_run") or {}
    where = f" · kept from `{' '.join(earlier['command'])}`" if earlier else ""
    wall = f" · {p['wall_s']:.0f} s" if p.get("wall_s") is not None else ""
    of = " (of that whole run)" if earlier.get("load_of_whole_run") else ""
    return f"Started {p.get('started_utc')}{wall}{where} · {_load(p, of)}."


def _governance_lines(g: dict[str, Any]) -> list[str]:
    sizes = g["sizes"]
    head = "| step | " + " | ".join(f"{s['n']:,} records" for s in sizes) + " |"
    lines = [
        "### Data governance",
        "",
        _when(g),
        "",
        f"Generated chat records (seed {g['seed']}; `generate()` in `bench/_corpus.py`): "
        f"about {sizes[-1]['chars_per_record']:.0f} characters each, 50 % Chinese "
        "government-service Q&A, 30 % English, 20 % Chinese technical support with English "
        "terms; 15 % of the unique records carry PII (phone, e-mail, identity number, bank "
        "card), 5 % of all lines are exact duplicates (half with whitespace or case changes), "
        "5 % near duplicates (a phrase inserted, a few characters deleted), 3 % low quality "
        "(repeated lines, mojibake, a blocked term), 0.5 % malformed. Records/s, median of "
        f"{g['repeats']} run(s); the steps alone run on the parsed records with the cut's "
        "settings.",
        "",
        head,
        "|---|" + "---:|" * len(sizes),
    ]
    rows = [
        ("PII scan + redact (`PiiScanner`, tag, every message)", lambda s: s["pii"]),
        ("dedup, exact + MinHash near (`Deduplicator`, 0.8, 128 perms)", lambda s: s["dedup"]),
        ("quality filter (`QualityFilter`)", lambda s: s["quality"]),
    ]
    for label, get in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt(get(s)["records_per_s"], 0) for s in sizes) + " |"
        )
    lines.append(
        "| the three steps alone, one after another | "
        + " | ".join(fmt(s["steps_alone_records_per_s"], 0) for s in sizes)
        + " |"
    )
    lines.append(
        "| **`DatasetStore.cut()` end to end** (read JSONL, ids, schema, PII, dedup, quality, "
        "split, write, register) | "
        + " | ".join(f"**{fmt(s['cut']['records_per_s'], 0)}**" for s in sizes)
        + " |"
    )
    lines.append(
        "| cut wall time (s) | " + " | ".join(fmt(s["cut"]["s_median"], 2) for s in sizes) + " |"
    )
    s = sizes[-1]
    n, inj = s["n"], s["injected"]
    steps = {st["step"]: st for st in s["cut"]["steps"]}
    pii_changed = steps.get("pii", {}).get("records_changed")
    dedup_removed = steps.get("dedup", {}).get("removed", {})
    q_in, q_out = steps.get("quality", {}).get("in"), steps.get("quality", {}).get("out")
    quarantine = s["cut"]["read"]["quarantined"] + steps.get("schema", {}).get("quarantined", 0)
    injected, removed = s["quality"]["injected_flaws"], s["quality"]["removed_flaws"]
    lines += [
        "",
        f"Sanity check at {n:,} lines: share of all lines injected, and changed or removed "
        "by the step in the cut and alone.",
        "",
        "| step | injected | in the cut | alone |",
        "|---|---:|---:|---:|",
        f"| PII: records changed | {pct(inj['pii_records'] / n)} | "
        f"{pct(pii_changed / n if pii_changed is not None else None)} | "
        f"{pct(s['pii']['records_changed'] / n)} |",
        f"| dedup: exact removed | {pct(inj['exact'] / n)} | "
        f"{pct(dedup_removed.get('exact', 0) / n)} | {pct(s['dedup']['removed']['exact'] / n)} |",
        f"| dedup: near removed | {pct(inj['near'] / n)} | "
        f"{pct(dedup_removed.get('near', 0) / n)} | {pct(s['dedup']['removed']['near'] / n)} |",
        f"| quality: removed | {pct(inj['low_quality'] / n)} | "
        f"{pct((q_in - q_out) / n if q_in is not None else None)} | "
        f"{pct(s['quality']['removed'] / n)} |",
        f"| read + schema: quarantined | {pct(inj['malformed'] / n)} | {pct(quarantine / n)} | |",
        "",
        f"Kept by the cut: {s['cut']['records']:,} records ({s['cut']['train']:,} train, "
        f"{s['cut']['eval']:,} eval). False positives: of the unique records, dedup removed "
        f"{s['dedup']['removed_by_kind'].get('unique', 0):,} and the quality filter "
        f"{s['quality']['removed_by_kind'].get('unique', 0):,}. Low-quality lines removed by "
        "the quality filter, by flaw: "
        + ", ".join(f"{k} {removed.get(k, 0):,} of {v:,}" for k, v in injected.items())
        + ".",
    ]
    if removed.get("mojibake", 0) < injected.get("mojibake", 0):
        lines += [
            "",
            "**Mojibake passes the quality filter**: `noise_share` "
            "(platform/lifecycle/data/quality.py) "
            "returns 0 as soon as `str.isprintable()` holds, and U+FFFD, the replacement "
            "character, is printable; so a text whose only noise is U+FFFD is never measured "
            "(its doctest passes only because it also holds a NUL).",
        ]
    return lines


def _finetune_lines(f: dict[str, Any]) -> list[str]:
    lines = [
        "### Fine-tuning step time and memory (CPU)",
        "",
        _when(f),
        "",
        "| model | method | steps (warm-up + measured) | batch × seq | trainable params | "
        "load s | step s (median) | tokens/s | RSS after the 1st step, as loading left it "
        "(MiB) | RSS during steps (MiB) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in f["cases"]:
        lines.append(
            f"| {c['label']} | {c['method']} | {c['warmup']} + {c['steps'] - c['warmup']} | "
            f"{c['batch_size']} × {c['seq_len']} | {c['trainable_params']:,} | "
            f"{fmt(c['load_s'], 1)} | {fmt(c['step_s_median'], 3)} | "
            f"{fmt(c['tokens_per_s_median'], 0)} | "
            f"{fmt(c.get('rss_first_step_untrimmed_mb'), 0)} | "
            f"{fmt(c['rss_during_steps_median_mb'], 0)} | {fmt(c['peak_rss_mb'], 0)} |"
        )
    by = {(c["label"], c["method"]): c for c in f["cases"]}
    imported = [c["rss_after_import_mb"] for c in f["cases"]]
    notes = [
        f"- Each case ran in a fresh process on {f['threads']} torch thread(s); the data is "
        "fixed bilingual instruction records cut to the sequence length. Step time and "
        "tokens/s are medians over the measured optimizer steps.",
        "- Memory is the process's resident set, torch / transformers / peft included "
        f"(~{fmt(statistics.fmean(imported) if imported else None, 0)} MiB after import). "
        "Loading leaves transient copies of the weights (as read in bf16, converted, and for "
        "QLoRA before quantisation) in glibc's free lists, so at the end of the first step "
        "the process gives its free heap back to the OS once (`malloc_trim`): the column "
        "before it is the RSS as loading left it, *RSS during steps* the median at the end "
        "of each measured step after it, what training holds. Peak is the high-water mark "
        "(`VmHWM`).",
    ]
    for label in dict.fromkeys(c["label"] for c in f["cases"]):
        lora, qlora = by.get((label, "lora")), by.get((label, "qlora"))
        if not (lora and qlora):
            continue
        during = qlora["rss_during_steps_median_mb"] / lora["rss_during_steps_median_mb"]
        saved = lora["rss_during_steps_median_mb"] - qlora["rss_during_steps_median_mb"]
        notes.append(
            f"- {label}: QLoRA's steps take {qlora['step_s_median'] / lora['step_s_median']:.2f}× "
            "LoRA's time (on the CPU bitsandbytes dequantises the NF4 weights for every "
            f"matmul, forward and backward); its RSS during steps is {during:.2f}× LoRA's "
            + (f"({fmt(saved, 0)} MiB less)" if saved >= 1 else "(no saving)")
            + ", its peak "
            f"{qlora['peak_rss_mb'] / lora['peak_rss_mb']:.2f}× LoRA's."
        )
    notes.append(
        "- LoRA here trains on an fp32 base (the CPU's compute type), so QLoRA's saving is "
        "against 32-bit weights; its saving against a 16-bit LoRA base in GPU memory is not "
        "measured here (no GPU on this machine)."
    )
    if any(c["label"].startswith("Qwen") for c in f["cases"]):
        notes.append(
            "- QLoRA quantises the transformer blocks' linear layers only; the embeddings "
            "and the output head stay fp32. Qwen2.5-0.5B has a 151,936-token vocabulary and "
            "an untied head: they are ~1.0 GiB of its ~1.2 GiB of weights under QLoRA "
            "(2.3 GiB all fp32 under LoRA), which caps the saving here."
        )
    notes += [f"- Not run: {s}" for s in f["skipped"]]
    return lines + [""] + notes


def section(r: dict[str, Any], raw: str) -> str:
    """The ``## Lifecycle`` section of ``bench/RESULTS.md``."""
    m, g = r["machine"], r["git"]
    dirty = f" (+{g['dirty_files']} uncommitted files)" if g.get("dirty_files") else ""
    v = r["versions"]
    lines = [
        "## Lifecycle",
        "",
        f"- Date: {r['finished_utc']} · `{' '.join(r['command'])}` · total "
        f"{r['total_wall_s']:.0f} s · raw: `{raw}`",
        f"- Machine: {m['cpu_model']}, {m['cpus']} cores, {m['ram_gib']} GiB RAM, no GPU; "
        f"load average (1 / 5 / 15 min) at start "
        f"{' / '.join(f'{x:.2f}' for x in r['loadavg_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in r['loadavg_end'])}",
        f"- Software: torch {v.get('torch')}, transformers {v.get('transformers')}, peft "
        f"{v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}, numpy {v.get('numpy')}, "
        f"Python {m['python']}; commit `{g['commit'][:10]}`{dirty}",
        "",
    ]
    if r.get("governance"):
        lines += _governance_lines(r["governance"]) + [""]
    if r.get("finetune"):
        lines += _finetune_lines(r["finetune"]) + [""]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------
def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes: comma-separated integers, got {text!r}"
        ) from None
    if not sizes or any(s < 100 for s in sizes):
        raise argparse.ArgumentTypeError("--sizes: each size must be at least 100")
    return sizes


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    r: dict[str, Any] = {
        "benchmark": "lifecycle",
        "command": ["bench/lifecycle.py", *argv],
        "started_utc": _now(),
        "machine": machine(),
        "versions": versions(("torch", "transformers", "peft", "bitsandbytes", "numpy")),
        "git": git_info(REPO),
        "loadavg_start": list(os.getloadavg()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if args.skip_governance:
        r["governance"] = _earlier_part(args.out, "governance")
    else:
        r["governance"] = _part(lambda: governance_bench(args.sizes, args.seed, args.repeats))
    tiny = Case("tiny Llama (random)", *args.tiny_steps, 2, 64)
    big = None if args.skip_05b else Case("Qwen2.5-Coder-0.5B", *args.big_steps, 2, 64)
    r["finetune"] = _part(
        lambda: finetune_bench(tiny, big, args.home, args.threads, ("lora", "qlora"))
    )
    r["loadavg_end"] = list(os.getloadavg())
    r["finished_utc"] = _now()
    r["total_wall_s"] = round(time.perf_counter() - started, 1)
    return r


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _part(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s result with when it ran, how long, and the load average around it."""
    started, load, t0 = _now(), list(os.getloadavg()), time.perf_counter()
    out = fn()
    out.update(
        started_utc=started,
        finished_utc=_now(),
        wall_s=round(time.perf_counter() - t0, 1),
        loadavg_start=load,
        loadavg_end=list(os.getloadavg()),
    )
    return out


def _earlier_part(path: Path, part: str) -> dict[str, Any] | None:
    """``part`` of the earlier result in ``path`` (None if there is none), marked as such;
    when it carries no timing of its own, the earlier run's is used."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = old.get(part)
    if not data:
        return None
    if "earlier_run" in data:  # kept already: it still comes from the run that made it
        return dict(data)
    own_timing = "loadavg_start" in data
    for key in ("started_utc", "loadavg_start", "loadavg_end"):
        data.setdefault(key, old.get(key))
    data.setdefault("wall_s", (old.get("part_wall_s") or {}).get(part))
    data["earlier_run"] = {
        "command": old.get("command"),
        "finished_utc": old.get("finished_utc"),
        "load_of_whole_run": not own_timing,
    }
    return data


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1,000 records, tiny model only, few steps; prints the "
        "section instead of writing bench/RESULTS.md",
    )
    parser.add_argument(
        "--skip-0.5b",
        dest="skip_05b",
        action="store_true",
        help=f"leave out {QWEN} (fine-tuning on the tiny model only)",
    )
    parser.add_argument(
        "--skip-governance",
        action="store_true",
        help="fine-tuning part only; the governance figures are kept from the earlier --out",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="governance: comma-separated record counts (default 10000,50000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="governance: runs per timing, the median is reported (default 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="governance: data seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the fine-tuning processes (default 1: on a shared machine a "
        "second thread mostly waits for a core; try 2 on a quiet one)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("QINGLIANG_HOME") or REPO / ".qingliang"),
        help="where the packaged model's HF copy is (<home>/models)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the JSON file (default {OUT.relative_to(REPO)}; "
        f"{QUICK_OUT.relative_to(REPO)} with --quick)",
    )
    parser.add_argument("--no-results", action="store_true", help="leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [1000] if args.quick else [10_000, 50_000]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.skip_05b = args.skip_05b or args.quick
    # (warm-up, measured) optimizer steps
    args.tiny_steps = (1, 3) if args.quick else (2, 10)
    args.big_steps = (2, 4)
    args.out = args.out or (QUICK_OUT if args.quick else OUT)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    r = run(args, argv)
    save_json(r, args.out)
    logger.info("raw results: %s (%.0f s)", args.out, r["total_wall_s"])
    raw = str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else str(args.out)
    text = section(r, raw)
    if args.quick or args.no_results:
        print(text)
    else:
        write_section(RESULTS, "Lifecycle", text)
        logger.info("updated %s", RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
