"""The health desk's triage router learning departments online: accuracy vs rounds.

Each round sends one patient question through the real ``health-desk`` graph (LangGraph
runtime, run store, ``RouterService`` with LinUCB), reads the department desk the router
chose, and gives the run feedback +1 (right desk) or -1 (wrong desk), as a nurse correcting
the triage would. The chat model is scripted (it answers with the notice and calls no tool) and
the knowledge base returns no passages: only the router is measured. The router's request
features embed the question with the packaged multilingual-e5-small, as on the platform.

    .venv/bin/python deploy/domains/healthcare/router_curve.py            # ../shared set
    .venv/bin/python deploy/domains/healthcare/router_curve.py --questions my.jsonl --rounds 400

A questions file is JSONL with ``question`` and ``department``; departments that are not
one of the desk's seven are mapped by ``ALIASES`` or skipped. The default set is the
internal-medicine QA set in ``../shared/domains/healthcare`` (evaluation only: it is read,
never copied into the repository).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2].parent / "shared" / "domains" / "healthcare"
DEFAULT_QUESTIONS = SHARED / "medical_qa_internal_medicine.jsonl"
#: Department names other sets use -> the desk's department.
ALIASES = {"消化科": "消化内科", "肝病科": "消化内科", "呼吸科": "呼吸内科", "神经科": "神经内科"}
FEEDBACK_ACTOR, NURSE = "patient", "nurse"


def desk_departments(graph) -> dict[str, str]:  # noqa: ANN001
    """The router's arms (desk nodes) by the department each desk records."""
    (triage,) = [t for t in graph.spec.tools if t.name == "triage"]
    (field,) = [f for f in triage.fields if f.name == "department"]
    by_agent = {a.name: a.role for a in graph.spec.agents}
    (router,) = [n for n in graph.spec.nodes if n.type == "router"]
    out = {}
    for arm in router.routes:
        agent = next(n.agent for n in graph.spec.nodes if n.name == arm)
        dept = next(d for d in field.enum or [] if by_agent[agent].startswith(d))
        out[dept] = arm
    return out


def load_questions(path: Path, departments: Sequence[str]) -> list[tuple[str, str]]:
    """(question, department) pairs of ``path`` whose department is one of the desk's."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        dept = ALIASES.get(rec["department"], rec["department"])
        if dept in departments:
            out.append((rec["question"], dept))
    return out


class _Answers:
    """The chat model: a fixed answer carrying the notice (the router is what is measured)."""

    async def complete(self, model, messages, **_kw):  # noqa: ANN001, ANN003
        from qingliang.agents.llm import ChatReply

        return ChatReply("请到对应科室就诊。不能替代医生诊断。", [], 8, model)


async def run_rounds(
    questions: Sequence[tuple[str, str]],
    *,
    home: Path,
    embed: Callable[[str], Awaitable[list[float] | None]] | None,
) -> list[bool]:
    """Send each question once, in order, with feedback; whether each was routed right."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.agents.catalog import StaticCatalog
    from qingliang.agents.routing.actor import RouterClient
    from qingliang.agents.routing.router import RouterService
    from qingliang.agents.service import AgentService
    from qingliang.agents.state import GraphDef
    from qingliang.platform.control.demos import prepare
    from qingliang.platform.manifests.loader import load_paths

    bundle = home / "bundle"  # a prepared copy: the repository stays as it was
    shutil.copytree(HERE, bundle, ignore=shutil.ignore_patterns("*.sqlite*", "samples"))
    prepare(bundle)
    (loaded,) = load_paths([bundle / "desk.yaml"])
    graph = loaded.manifest
    arm_of = desk_departments(graph)

    def no_passages(*_a, **_kw) -> list:  # noqa: ANN002, ANN003
        return []

    svc = AgentService(
        home / "agents",
        chat=_Answers(),
        catalog=StaticCatalog([GraphDef(graph, bundle)]),
        router=RouterClient(RouterService(home / "router.sqlite")),
        knowledge=no_passages,
        embed=embed,
    )
    right = []
    async with svc:
        for text, dept in questions:
            run_id, events = await svc.start("health-desk", {"input": text}, tenant=None,
                                             actor=FEEDBACK_ACTOR)  # fmt: skip
            seen = [e async for e in events]
            if svc.get(run_id, None).status == "waiting":  # a red flag: the nurse lets it on
                _, more = await svc.resume(run_id, {"action": "approve"}, tenant=None,
                                           actor=NURSE)  # fmt: skip
                seen += [e async for e in more]
            arm = next(e["arm"] for e in seen if e["type"] == "route")
            right.append(arm == arm_of[dept])
            await svc.feedback(run_id, 1.0 if right[-1] else -1.0, tenant=None,
                               actor=FEEDBACK_ACTOR)  # fmt: skip
    return right


def packaged_embed() -> Callable[[str], Awaitable[list[float] | None]]:
    """The platform's router embedding: multilingual-e5-small, as a query."""
    from qingliang.serving.embeddings import PackagedEmbedder

    embedder = PackagedEmbedder()

    async def embed(text: str) -> list[float] | None:
        return (await asyncio.to_thread(embedder.embed, [text], input_type="query"))[0]

    return embed


def blocks(right: Sequence[bool], size: int) -> list[float]:
    """Accuracy over consecutive blocks of ``size`` rounds."""
    return [sum(right[i : i + size]) / len(right[i : i + size]) for i in range(0, len(right), size)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    p.add_argument("--rounds", type=int, default=600, help="questions sent (default 600)")
    p.add_argument("--block", type=int, default=100, help="rounds per accuracy point")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--hash-embedding", action="store_true",
                   help="route on the trigram hashing embedding instead of e5")  # fmt: skip
    args = p.parse_args(argv)
    if not args.questions.is_file():
        print(f"{args.questions}: no such questions file", file=sys.stderr)
        return 2
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import load_paths

    (loaded,) = load_paths([HERE / "desk.yaml"])
    pool = load_questions(args.questions, list(desk_departments(loaded.manifest)))
    random.Random(args.seed).shuffle(pool)
    stream = (pool * (args.rounds // max(1, len(pool)) + 1))[: args.rounds]
    embed = None if args.hash_embedding else packaged_embed()
    with tempfile.TemporaryDirectory() as tmp:
        right = asyncio.run(run_rounds(stream, home=Path(tmp), embed=embed))
    curve = blocks(right, args.block)
    print(f"{len(stream)} rounds over {len(pool)} questions, {len(set(d for _, d in pool))} desks")
    for i, acc in enumerate(curve):
        end = min((i + 1) * args.block, len(right))
        print(f"rounds {i * args.block + 1:>5}-{end:<5} accuracy {acc:.3f}")
    print(json.dumps({"rounds": len(right), "block": args.block, "accuracy": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
