"""What a request to start or resume a run must hold, and the decision an approval records.

:class:`~qingliang.agents.service.AgentService` checks a body's keys with
:func:`check_keys` and turns a resume's body into the decision the approval node receives
with :func:`checked_decision`: the action, who decided, the comment, and with ``edit`` the
answer or form values that replace the run's (form values checked against the graph's
form tools). The key that started a run may not answer its approval unless the graph
allows it.
"""

from __future__ import annotations

from typing import Any

from qingliang.agents.runs import Run
from qingliang.agents.state import GraphDef
from qingliang.platform.errors import BadRequest, Forbidden, did_you_mean

MAX_INPUT_CHARS = 32_000
#: The actor of a request that carried no key (a gateway started with ``--no-auth``):
#: callers cannot be told apart, so the distinct-approver rule cannot apply to it.
ANONYMOUS = "api"
RUN_KEYS = frozenset({"input", "domain", "attachments", "stream"})
RESUME_KEYS = frozenset({"action", "answer", "forms", "comment", "stream"})


def check_keys(body: dict, allowed: frozenset[str], what: str) -> None:
    """Refuse a ``body`` that is not an object, or has a key outside ``allowed``.

    Raises:
        BadRequest: naming the first unknown key, with a "did you mean" hint.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"{what} body must be a JSON object")
    for key in body:
        if key not in allowed:
            more = did_you_mean(key, sorted(allowed))
            raise BadRequest(f"unknown field {key!r}{more}", param=key)


def checked_decision(
    gdef: GraphDef, run: Run, body: dict, *, action: str, actor: str
) -> dict[str, Any]:
    """The decision ``actor`` sends to ``run``'s approval: action, actor, comment (and,
    with ``edit``, the answer or forms).

    Raises:
        BadRequest: a malformed comment, answer or form; an answer or forms without edit.
        Forbidden: ``actor`` started the run and the approval does not allow that.
    """
    decision: dict[str, Any] = {"action": action, "actor": actor}
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise BadRequest("`comment` must be a string", param="comment")
    decision["comment"] = comment
    if action == "edit":
        decision.update(_checked_edit(gdef, body))
    elif "answer" in body or "forms" in body:
        raise BadRequest("`answer` and `forms` go with action edit", param="action")
    pending = run.pending or {}
    if actor == run.actor and actor != ANONYMOUS and not pending.get("allow_self_approval"):
        raise Forbidden(
            f"run {run.id!r} was started by {actor}; another key with the `approve` "
            "scope must answer its approval (the graph may set allow_self_approval)",
            code="self_approval",
        )
    return decision


def _checked_edit(gdef: GraphDef, body: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    answer, forms = body.get("answer"), body.get("forms")
    if answer is None and forms is None:
        raise BadRequest("action edit needs `answer` or `forms`", param="answer")
    if answer is not None:
        if not isinstance(answer, str) or len(answer) > MAX_INPUT_CHARS:
            raise BadRequest("`answer` must be a string", param="answer")
        out["answer"] = answer
    if forms is not None:
        if not isinstance(forms, dict):
            raise BadRequest("`forms` must map form tool names to values", param="forms")
        from qingliang.agents.tools.forms import validate_values

        known = {t.name: t for t in gdef.manifest.spec.tools if t.kind == "form"}
        checked = {}
        for name, values in forms.items():
            if name not in known:
                raise BadRequest(
                    f"forms.{name}: unknown form; known: {', '.join(known) or 'none'}",
                    param=f"forms.{name}",
                )
            if not isinstance(values, dict):
                raise BadRequest(f"forms.{name} must be an object", param=f"forms.{name}")
            clean, problems = validate_values(known[name], values)
            if problems:
                raise BadRequest(f"forms.{name}: " + "; ".join(problems), param="forms")
            checked[name] = clean
        out["forms"] = checked
    return out
