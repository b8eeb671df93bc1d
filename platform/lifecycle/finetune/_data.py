"""Training records: parsing, prompt rendering, tokenisation with loss masks, batching.

Records are chat ``{"messages": [{"role", "content"}, ...]}`` or instruction
``{"instruction", "input"?, "output"}`` dicts (``id`` and ``metadata`` keys are allowed
and ignored; other keys are errors). An instruction record becomes a two-message chat:
the user turn is the instruction, followed by a blank line and the input when there is
one; the assistant turn is the output.

A conversation is rendered with the tokenizer's chat template when it has one. Without
one, this fallback template is used (and the same by the evaluation helper); every
turn is a header line and its content, the assistant's content ends with the EOS token::

    <bos>### System:
    {content}

    ### User:
    {content}

    ### Assistant:
    {content}<eos>


Loss is computed on assistant tokens only: every token of an assistant turn's content
and of the template's end-of-turn marker after it is labelled, everything else gets
label ``-100``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qingliang.platform.errors import FieldIssue, did_you_mean
from qingliang.platform.lifecycle.finetune.settings import InvalidFineTune, invalid

logger = logging.getLogger(__name__)

IGNORE = -100
ROLES = ("system", "user", "assistant")
_CHAT_KEYS = {"messages"}
_INSTRUCTION_KEYS = {"instruction", "input", "output"}
_IGNORED_KEYS = {"id", "metadata"}

Message = tuple[str, str]  # (role, content)
Conversation = tuple[Message, ...]


def parse_records(records: Sequence[Mapping[str, Any]], field: str) -> list[Conversation]:
    """Check every record and turn it into a conversation (pure).

    Raises:
        InvalidFineTune: listing each bad record as ``field[i].key``.
    """
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise invalid(field, "must be a list of records")
    if not records:
        raise invalid(field, "has no records")
    out: list[Conversation] = []
    issues: list[FieldIssue] = []
    for i, rec in enumerate(records):
        try:
            out.append(_parse_one(rec, f"{field}[{i}]"))
        except InvalidFineTune as exc:
            issues.extend(exc.issues)
        if len(issues) >= 20:
            issues.append(FieldIssue(field, "(stopped after 20 issues)"))
            break
    if issues:
        raise InvalidFineTune(issues)
    return out


def _parse_one(rec: object, where: str) -> Conversation:
    if not isinstance(rec, Mapping):
        raise invalid(where, f"must be an object, got {type(rec).__name__}")
    keys = set(rec) - _IGNORED_KEYS
    if "messages" in keys:
        _no_unknown(keys, _CHAT_KEYS, where)
        return _parse_chat(rec["messages"], f"{where}.messages")
    if "instruction" in keys or "output" in keys:
        _no_unknown(keys, _INSTRUCTION_KEYS, where)
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise invalid(f"{where}.{key}", "must be a non-empty string")
        user = rec["instruction"]
        extra = rec.get("input")
        if extra is not None and not isinstance(extra, str):
            raise invalid(f"{where}.input", "must be a string")
        if extra and extra.strip():
            user = f"{user}\n\n{extra}"
        return (("user", user), ("assistant", rec["output"]))
    raise invalid(
        where,
        "is neither a chat record ({'messages': [...]}) nor an instruction record "
        "({'instruction', 'input'?, 'output'})",
    )


def _no_unknown(keys: set[str], allowed: set[str], where: str) -> None:
    unknown = sorted(keys - allowed)
    if unknown:
        more = did_you_mean(unknown[0], sorted(allowed | _IGNORED_KEYS))
        raise invalid(f"{where}.{unknown[0]}", f"unknown key{more}")


def _parse_chat(messages: object, where: str) -> Conversation:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise invalid(where, "must be a non-empty list of {role, content} messages")
    out: list[Message] = []
    for j, m in enumerate(messages):
        at = f"{where}[{j}]"
        if not isinstance(m, Mapping):
            raise invalid(at, "must be an object with role and content")
        _no_unknown(set(m) - _IGNORED_KEYS, {"role", "content"}, at)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise invalid(f"{at}.role", f"must be one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(content, str):
            raise invalid(f"{at}.content", "must be a string")
        if role == "system" and j != 0:
            raise invalid(f"{at}.role", "a system message may only come first")
        out.append((role, content))
    if not any(r == "assistant" for r, _ in out):
        raise invalid(where, "has no assistant message to learn from")
    return tuple(out)


def data_sha256(records: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the records as canonical JSON lines (sorted keys, UTF-8)."""
    h = hashlib.sha256()
    for rec in records:
        line = json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def split_for_eval(conv: Conversation) -> tuple[Conversation, str]:
    """(prompt messages, reference answer): the last assistant turn is the reference."""
    last = max(i for i, (role, _) in enumerate(conv) if role == "assistant")
    return conv[:last], conv[last][1]


# ---------------------------------------------------------------- rendering


def _as_dicts(conv: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in conv]


def _fallback_turn(tokenizer: Any, role: str, content: str) -> tuple[str, str]:
    """(header, body) of one turn in the fallback template."""
    eos = tokenizer.eos_token or ""
    body = f"{content}{eos}\n\n" if role == "assistant" else f"{content}\n\n"
    return f"### {role.capitalize()}:\n", body


def render_prompt(tokenizer: Any, conv: Sequence[Message]) -> str:
    """Text that asks the model for the next assistant turn after ``conv``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            _as_dicts(conv), tokenize=False, add_generation_prompt=True
        )
        return str(text)
    parts = [tokenizer.bos_token or ""]
    for role, content in conv:
        parts.extend(_fallback_turn(tokenizer, role, content))
    parts.append("### Assistant:\n")
    return "".join(parts)


def render_segments(tokenizer: Any, conv: Conversation) -> list[tuple[str, bool]]:
    """The conversation's text as (piece, is_trained) segments, in order.

    With a chat template the assistant spans are found by rendering growing prefixes:
    turn ``i`` is the text between the prompt for it (``add_generation_prompt``) and
    the conversation up to it. Templates that rewrite earlier turns (some drop old
    reasoning) break that for all but the last turn; then only the last is trained.

    Raises:
        InvalidFineTune: the template renders the final answer inconsistently.
    """
    if not getattr(tokenizer, "chat_template", None):
        segs: list[tuple[str, bool]] = [(tokenizer.bos_token or "", False)]
        for role, content in conv:
            head, body = _fallback_turn(tokenizer, role, content)
            segs += [(head, False), (body, role == "assistant")]
        return [s for s in segs if s[0]]

    def render(msgs: Sequence[Message], gen: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                _as_dicts(msgs), tokenize=False, add_generation_prompt=gen
            )
        )

    full = render(conv, False)
    turns = [i for i, (role, _) in enumerate(conv) if role == "assistant"]
    spans: list[tuple[int, int]] = []
    for i in turns:
        prompt, upto = render(conv[:i], True), render(conv[: i + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            spans = []
            break
        spans.append((len(prompt), len(upto)))
    if not spans:
        last = turns[-1]
        prompt = render(conv[:last], True)
        upto = render(conv[: last + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise invalid(
                "base_model",
                "the tokenizer's chat template does not render a conversation as its "
                "prompt followed by the answer; cannot tell answer tokens apart",
            )
        spans = [(len(prompt), len(upto))]
    segs, pos = [], 0
    for start, end in spans:
        segs += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    segs.append((full[pos:], False))
    return [s for s in segs if s[0]]


# ---------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Example:
    """One tokenised record: ``labels`` is ``input_ids`` with untrained tokens -100."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def tokenize(tokenizer: Any, conv: Conversation, max_seq_len: int) -> Example:
    """Token ids and labels for one conversation, cut to ``max_seq_len`` tokens.

    A fast tokenizer encodes the whole text once and labels each token by where its
    first character lies; a slow one encodes segment by segment.
    """
    segs = render_segments(tokenizer, conv)
    ids: list[int] = []
    labels: list[int] = []
    if getattr(tokenizer, "is_fast", False):
        text = "".join(s for s, _ in segs)
        bounds, pos = [], 0
        for s, trained in segs:
            bounds.append((pos, pos + len(s), trained))
            pos += len(s)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for tid, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            trained = any(a <= start < b and t for a, b, t in bounds)
            ids.append(tid)
            labels.append(tid if trained else IGNORE)
    else:
        for s, trained in segs:
            part = tokenizer(s, add_special_tokens=False)["input_ids"]
            ids += part
            labels += part if trained else [IGNORE] * len(part)
    return Example(tuple(ids[:max_seq_len]), tuple(labels[:max_seq_len]))


def tokenize_all(
    tokenizer: Any, convs: Sequence[Conversation], max_seq_len: int
) -> tuple[list[Example], int]:
    """(examples with at least one trained token, number skipped)."""
    kept = []
    for conv in convs:
        ex = tokenize(tokenizer, conv, max_seq_len)
        if ex.trained_tokens:
            kept.append(ex)
    skipped = len(convs) - len(kept)
    if skipped:
        logger.warning("%d record(s) have no answer token within max_seq_len; skipped", skipped)
    return kept, skipped


# ---------------------------------------------------------------- batching


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch to its longest example (labels -100, attention 0)."""
    import torch

    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for row, e in enumerate(examples):
        k = len(e.input_ids)
        ids[row, :k] = torch.tensor(e.input_ids)
        labels[row, :k] = torch.tensor(e.labels)
        mask[row, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass (the last window may hold fewer micro-batches)."""
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


@dataclass(frozen=True)
class Window:
    """The micro-batches (lists of example indices) of one optimizer step."""

    step: int  # 1-based
    epoch: float  # epochs completed after this step, fractional
    batches: tuple[tuple[int, ...], ...]


def windows(
    n_examples: int, batch_size: int, grad_accum: int, total_steps: int, seed: int
) -> Iterator[Window]:
    """Optimizer-step windows over seeded shuffles of the data, one shuffle per epoch.

    Deterministic for the same arguments, so a resumed run skips to where it stopped.
    """
    import torch

    per_epoch = steps_per_epoch(n_examples, batch_size, grad_accum)
    step, epoch = 0, 0
    while step < total_steps:
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n_examples, generator=gen).tolist()
        micro = [tuple(order[i : i + batch_size]) for i in range(0, n_examples, batch_size)]
        for k in range(per_epoch):
            step += 1
            yield Window(
                step=step,
                epoch=epoch + (k + 1) / per_epoch,
                batches=tuple(micro[k * grad_accum : (k + 1) * grad_accum]),
            )
            if step >= total_steps:
                return
        epoch += 1
