"""One generation on the transformers engine's worker thread, and its OpenAI shapes.

:class:`Run` is the thread-side state of a generation (also its ``StoppingCriteria``);
:func:`usage_of` shapes what the engine answers.
"""

from __future__ import annotations

import threading
from typing import Any

from qingliang.serving.engines._hf_request import Request

#: Prompt tokens kept as detokenisation context, as vLLM does (leading spaces, bytes).
DETOKENIZE_CONTEXT = 5


class Run:
    """Thread-side state of one generation; also its ``StoppingCriteria``.

    ``generate`` calls it after every new token: it detokenises incrementally, applies
    stop strings (holding back text that may start one, like vLLM), posts text deltas to
    the event loop, and stops generation on a stop string, ``max_tokens`` or
    cancellation (the client went away).
    """

    def __init__(self, req: Request, tokenizer: Any, eos_ids: set[int], post: Any) -> None:
        self.req = req
        self.tok = tokenizer
        self.eos_ids = eos_ids
        self.post = post
        self.cancel = threading.Event()
        self.n_tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.text = ""
        self.sent = 0
        self._ids = list(req.prompt_ids[-DETOKENIZE_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self._holdback = max((len(s) for s in req.stop), default=1) - 1

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.cancel.is_set() or self.finish_reason is not None
        if not done:
            self._on_token(int(input_ids[0, -1]))
            done = self.finish_reason is not None
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def _on_token(self, token: int) -> None:
        self.n_tokens += 1
        if token in self.eos_ids:
            self.finish_reason = "stop"
        else:
            self._ids.append(token)
            self._add_text(self._decode_delta(final=False))
        if self.finish_reason is None and self.n_tokens >= self.req.max_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            self._add_text(self._decode_delta(final=True))
        self._flush()

    def _decode_delta(self, *, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        prefix = self.tok.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        full = self.tok.decode(self._ids[self._prefix :], skip_special_tokens=True)
        if not final and (len(full) <= len(prefix) or full.endswith("\ufffd")):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return full[len(prefix) :]

    def _add_text(self, delta: str) -> None:
        if not delta or self.stop_reason is not None:
            return
        start = max(0, len(self.text) - self._holdback)
        self.text += delta
        hits = [(i, s) for s in self.req.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            i, s = min(hits)
            self.text, self.stop_reason, self.finish_reason = self.text[:i], s, "stop"

    def _flush(self) -> None:
        end = len(self.text) if self.finish_reason else len(self.text) - self._holdback
        if end > self.sent:
            self.post(("delta", self.text[self.sent : end]))
            self.sent = end


def usage_of(req: Request, run: Run) -> dict:
    n_in = len(req.prompt_ids)
    return {
        "prompt_tokens": n_in,
        "completion_tokens": run.n_tokens,
        "total_tokens": n_in + run.n_tokens,
    }
