"""``qingliang eval``: ask a graph or a knowledge base a questions file and score the answers.

``run`` talks to the platform only over its HTTP API — at ``--url``, else the address
``qingliang up`` recorded — with the key in ``--api-key``, ``$QINGLIANG_API_KEY`` or the
operator key in ``$QINGLIANG_HOME/api-key``, so a remote platform is evaluated the same
way. ``score`` recomputes the metrics of an output file without asking anything again.
The file formats and the metrics are a contract other tools read: docs/eval.md.

Example:
    $ qingliang eval run gov-policy --questions gold.jsonl --out out.jsonl
    $ qingliang eval run gov-desk --questions gold.jsonl --out out.jsonl --concurrency 4 --json
    $ qingliang eval score --questions gold.jsonl --out out.jsonl --kind kb
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from qingliang.platform.errors import QingliangError
from qingliang.platform.lifecycle.evaluation import metrics as metrics_mod
from qingliang.platform.lifecycle.evaluation import runner
from qingliang.platform.lifecycle.evaluation.questions import Question, read_questions
from qingliang.platform.settings import Settings

log = logging.getLogger(__name__)

eval_app = typer.Typer(
    help="Evaluate an agent graph or a knowledge base on a questions file (JSONL): "
    "answers, citations, routes and form fields per question, and metrics where the file "
    "has gold fields. The formats: docs/eval.md.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

KEY_ENV = "QINGLIANG_API_KEY"

#: Rows of the metrics table: key in the metrics JSON, and how the table names it.
ROWS = (
    ("answer_span_hit", "answer-span hit"),
    ("doc_hit_at_k", "doc hit@{k}"),
    ("doc_mrr", "doc MRR@{k}"),
    ("label_accuracy", "label accuracy"),
    ("nugget_recall", "nugget recall"),
    ("cited", "answers with citations"),
)


def _fail(exc: BaseException | str) -> NoReturn:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _connect(url: str | None, api_key: str | None) -> runner.PlatformApi:
    from qingliang.platform.cli import _remote

    chosen = _remote.target()
    if url is None and chosen is not None:  # the global --server / QINGLIANG_URL
        url, api_key = chosen.url, api_key or chosen.key
    settings = Settings()
    key = api_key or os.environ.get(KEY_ENV) or None
    if key is None and (settings.home / "api-key").is_file():
        key = (settings.home / "api-key").read_text().strip() or None
    if url is None:
        from qingliang.platform.control import cluster

        info = cluster.running(settings)
        if info is None:
            raise QingliangError(
                "the platform is not running: start it with `qingliang up`, or pass --url"
            )
        url = f"http://{settings.host}:{info.http_port}"
    return runner.PlatformApi(url.rstrip("/").removesuffix("/v1"), key)


def _table(m: dict[str, Any]) -> Table:
    table = Table("METRIC", "VALUE", "QUESTIONS", title=f"{m['questions']} questions, k={m['k']}")
    for key, label in ROWS:
        if key in m:
            table.add_row(label.format(k=m["k"]), f"{m[key]['value']:.3f}", str(m[key]["n"]))
        if key == "label_accuracy":
            for field, value in (m.get("labels") or {}).items():
                table.add_row(f"  label {field}", f"{value['value']:.3f}", str(value["n"]))
    lat = m.get("latency") or {}
    if lat.get("n"):
        table.add_row(
            "latency (s) mean / p50 / p95",
            f"{lat['mean_s']:.2f} / {lat['p50_s']:.2f} / {lat['p95_s']:.2f}",
            str(lat["n"]),
        )
    table.add_row(
        "errors", str(m["errors"]), str(m["questions"]), style="red" if m["errors"] else None
    )
    return table


def _report(m: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(m, ensure_ascii=False, indent=2))
    else:
        console.print(_table(m))


def _ask_all(
    api: runner.PlatformApi,
    target: str,
    questions: list[Question],
    out: Path,
    *,
    kind: str,
    k: int,
    concurrency: int,
    progress: bool,
) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "{task.fields[failed]}",
        console=err,
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{kind} {target}", total=len(questions), failed="")
        failed = 0

        def done(output: dict[str, Any]) -> None:
            nonlocal failed
            failed += bool(output.get("error"))
            bar.update(task, advance=1, failed=f"[red]{failed} failed" if failed else "")

        return runner.run(
            api, target, questions, out, kind=kind, k=k, concurrency=concurrency, on_done=done
        )


@eval_app.command("run")
def run(
    target: str = typer.Argument(
        ..., metavar="TARGET", help="An applied AgentGraph or KnowledgeBase (by name)."
    ),
    questions: Path = typer.Option(
        ..., "--questions", "-q", help='JSONL: {"id", "question", "image"?} + gold fields.'
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="JSONL written as answers arrive: one line per question."
    ),
    kind: str = typer.Option(
        None, help="graph or kb; needed only when TARGET names both (asked of the platform)."
    ),
    k: int = typer.Option(5, "--k", min=1, max=100, help="Citations that count for hit@k/MRR."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first K questions."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Questions at once."),
    url: str = typer.Option(
        None, help="The platform (http://host:port); default: the one `qingliang up` started."
    ),
    api_key: str = typer.Option(
        None, "--api-key", help=f"Default: ${KEY_ENV}, else $QINGLIANG_HOME/api-key."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar (on stderr)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Ask TARGET every question of the file, write the answers, print the metrics.

    The questions file is checked whole first: a bad line stops it before anything runs.
    A question that fails gets an "error" in its output line and the run goes on; exits 1
    when the file is bad, the target unknown, or every question failed.
    """
    try:
        asked = read_questions(questions, limit)
        api = _connect(url, api_key)
    except QingliangError as exc:
        _fail(exc)
    try:
        kind = runner.detect_kind(api, target, kind)
        outputs = _ask_all(
            api, target, asked, out, kind=kind, k=k, concurrency=concurrency, progress=progress
        )
    except QingliangError as exc:
        _fail(exc)
    finally:
        api.close()
    m = metrics_mod.compute([q.gold for q in asked], outputs, k=k, kind=kind)
    _report(m, as_json)
    if not as_json:
        err.print(f"{len(outputs)} answers written to {out}", highlight=False)
    if outputs and m["errors"] == len(outputs):
        first = next(o["error"] for o in outputs if o.get("error"))
        _fail(f"every question failed; the first: {first}")


@eval_app.command("score")
def score(
    questions: Path = typer.Option(..., "--questions", "-q", help="The questions file (gold)."),
    out: Path = typer.Option(..., "--out", "-o", help="The output file of `eval run`."),
    kind: str = typer.Option(..., help="graph or kb: what the outputs came from."),
    k: int = typer.Option(5, "--k", min=1, max=100, help="Citations that count for hit@k/MRR."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Recompute the metrics of an output file against its questions (nothing is asked)."""
    try:
        if kind not in runner.KINDS:
            raise QingliangError(f"--kind must be one of {', '.join(runner.KINDS)}, not {kind!r}")
        asked = {q.id: q for q in read_questions(questions)}
        outputs = _read_outputs(out)
        missing = [o["id"] for o in outputs if o["id"] not in asked]
        if missing:
            raise QingliangError(f"{out}: ids not in {questions}: {', '.join(missing[:5])}")
    except QingliangError as exc:
        _fail(exc)
    m = metrics_mod.compute([asked[o["id"]].gold for o in outputs], outputs, k=k, kind=kind)
    _report(m, as_json)


def _read_outputs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise QingliangError(f"no such output file: {path}")
    outputs = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QingliangError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "id" not in obj:
            raise QingliangError(f"{path}: line {number}: id: is required")
        obj["id"] = str(obj["id"])
        outputs.append(obj)
    return outputs
