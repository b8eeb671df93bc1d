"""The metrics of ``qingliang eval``: pure functions of the gold fields and the outputs.

Every text comparison goes through :func:`normalize` (Unicode NFKC, so full-width and
half-width forms agree; case folded; all whitespace removed, so line breaks inside a
chunk do not matter) and is a containment test. A question that failed (its output has
``error``) counts as a miss in every metric it has gold for.

- ``answer_span_hit``: a gold ``answer_span`` or one of ``answers`` is contained in the
  answer (graph) or in the text of the top-k citations (knowledge base: hit@k), each
  citation's ``context`` where it has one (:func:`retrieved_text`: what a model is given).
- ``doc_hit_at_k`` / ``doc_mrr``: the first of the top-k citations that matches a gold
  ``doc_id``, ``record`` or ``source`` (:func:`citation_matches`) is at rank r: hit 1 and
  reciprocal rank 1/r; none in the top k: 0 and 0.
- ``label_accuracy``: each gold ``labels`` pair ``field: value`` against the output's
  ``fields`` (``route`` is the route's arm unless a field has that name); correct pairs /
  all pairs, and per field.
- ``nugget_recall``: the share of gold ``nuggets`` found in the answer (graph) or in the
  top-k citations' text, context included (knowledge base), averaged over questions.

Each metric is averaged over the questions that have its gold fields (``n`` says how
many); a metric no question has gold for is absent.

Example:
    >>> q = {"answers": ["七 天"], "doc_id": "d2"}
    >>> out = {"answer": "居家观察７天", "citations": [{"doc_id": "d1"}, {"doc_id": "d2"}]}
    >>> span_hit(["七 天", "７天"], "居家观察７天"), doc_rank(q, out["citations"], 5)
    (True, 2)
    >>> normalize(" ＡＢ c\\n")
    'abc'
"""

from __future__ import annotations

import math
import statistics
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The gold fields that name a document, compared with a citation's fields of the same name.
DOC_KEYS = ("doc_id", "record", "source")


def normalize(text: object) -> str:
    """NFKC, case-folded, without whitespace: the form every comparison uses."""
    folded = unicodedata.normalize("NFKC", str(text)).casefold()
    return "".join(folded.split())


def span_hit(spans: Iterable[str], text: str | None) -> bool:
    """Whether any of ``spans`` is contained in ``text`` (both normalised)."""
    haystack = normalize(text or "")
    return any((needle := normalize(s)) and needle in haystack for s in spans)


def nugget_recall(nuggets: Sequence[str], text: str | None) -> float:
    """The share of ``nuggets`` contained in ``text`` (0 when there are none)."""
    if not nuggets:
        return 0.0
    return sum(span_hit([n], text) for n in nuggets) / len(nuggets)


def citation_matches(gold: Mapping[str, Any], citation: Mapping[str, Any]) -> bool:
    """Whether a citation is a gold document.

    ``doc_id`` and ``record`` must be equal; a gold ``source`` equals the citation's
    source or its last path parts (``policy.md`` matches ``docs/policy.md``).
    """
    for key in DOC_KEYS:
        have = citation.get(key)
        if have is None or key not in gold:
            continue
        have = str(have)
        wanted = gold[key]
        for want in [wanted] if isinstance(wanted, str) else wanted:
            if have == want or (key == "source" and have.endswith("/" + want.lstrip("/"))):
                return True
    return False


def doc_rank(gold: Mapping[str, Any], citations: Sequence[Mapping[str, Any]], k: int) -> int | None:
    """The 1-based rank of the first gold document in the top ``k`` citations, or None."""
    for rank, citation in enumerate(citations[:k], 1):
        if citation_matches(gold, citation):
            return rank
    return None


def label_hits(labels: Mapping[str, Any], fields: Mapping[str, Any], route: Any) -> dict[str, bool]:
    """Each gold label: whether the output's field (or ``route``) equals it, normalised."""
    out = {}
    for name, want in labels.items():
        have = fields.get(name, route if name == "route" else None)
        out[name] = have is not None and normalize(_scalar(have)) == normalize(_scalar(want))
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def retrieved_text(citations: Sequence[Mapping[str, Any]], k: int) -> str:
    """The top ``k`` citations' text, one after the other: of a citation with a ``context``
    (its chunk with neighbouring chunks, what an agent's prompt is given) the context, with
    the cited text before it should the context not contain it.

    Example:
        >>> retrieved_text([{"text": "b", "context": "a b c"}, {"text": "d"}], 5)
        'a b c\\nd'
    """
    return "\n".join(_given(c) for c in citations[:k])


def _given(citation: Mapping[str, Any]) -> str:
    text = str(citation.get("text") or "")
    context = citation.get("context")
    if not context:
        return text
    context = str(context)
    return context if text in context else f"{text}\n{context}"


def _mean(values: list[float]) -> dict[str, float | int]:
    return {"value": round(sum(values) / len(values), 4), "n": len(values)}


def _latency(outputs: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    times = sorted(float(o["latency_s"]) for o in outputs if o.get("latency_s") is not None)
    if not times:
        return {"n": 0}
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    return {
        "n": len(times),
        "mean_s": round(statistics.fmean(times), 3),
        "p50_s": round(statistics.median(times), 3),
        "p95_s": round(p95, 3),
    }


def compute(
    gold: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    *,
    k: int = 5,
    kind: str = "graph",
) -> dict[str, Any]:
    """The metrics of a run: ``gold[i]`` (a question's gold fields) goes with ``outputs[i]``.

    Args:
        gold: Per question, its gold fields (``Question.gold``: list-valued doc keys).
        outputs: Per question, the output line (``answer``, ``citations``, ``fields``,
            ``route``, ``latency_s``, ``error``).
        k: How many citations count for hit@k, MRR and the knowledge base's text.
        kind: ``graph`` (spans and nuggets in the answer) or ``kb`` (in the top-k text).

    Returns:
        ``{"target_kind", "k", "questions", "errors", "cited", "latency", <metric>: {"value",
        "n"}, "labels": {field: {"value", "n"}}}``; a metric without gold is absent.
    """
    if len(gold) != len(outputs):
        raise ValueError(f"{len(gold)} gold entries for {len(outputs)} outputs")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    spans: list[float] = []
    hits: list[float] = []
    ranks: list[float] = []
    nuggets: list[float] = []
    labels: dict[str, list[float]] = {}
    cited: list[float] = []
    for g, out in zip(gold, outputs, strict=True):
        failed = bool(out.get("error"))
        citations = [] if failed else list(out.get("citations") or [])
        text = retrieved_text(citations, k) if kind == "kb" else out.get("answer")
        text = None if failed else text
        if not failed and (kind == "kb" or out.get("answer")):
            cited.append(float(bool(citations)))
        wanted = ([g["answer_span"]] if "answer_span" in g else []) + list(g.get("answers") or [])
        if wanted:
            spans.append(float(span_hit(wanted, text)))
        if any(key in g for key in DOC_KEYS):
            rank = doc_rank(g, citations, k)
            hits.append(float(rank is not None))
            ranks.append(1.0 / rank if rank else 0.0)
        if g.get("nuggets"):
            nuggets.append(nugget_recall(g["nuggets"], text))
        if g.get("labels"):
            fields = {} if failed else dict(out.get("fields") or {})
            route = None if failed else out.get("route")
            for name, ok in label_hits(g["labels"], fields, route).items():
                labels.setdefault(name, []).append(float(ok))
    metrics: dict[str, Any] = {
        "target_kind": kind,
        "k": k,
        "questions": len(outputs),
        "errors": sum(1 for o in outputs if o.get("error")),
    }
    named = {
        "answer_span_hit": spans,
        "doc_hit_at_k": hits,
        "doc_mrr": ranks,
        "nugget_recall": nuggets,
        "cited": cited,
    }
    metrics.update({name: _mean(values) for name, values in named.items() if values})
    if labels:
        every = [v for values in labels.values() for v in values]
        metrics["label_accuracy"] = _mean(every)
        metrics["labels"] = {name: _mean(values) for name, values in sorted(labels.items())}
    metrics["latency"] = _latency(outputs)
    return metrics
