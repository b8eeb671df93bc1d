"""Per-chunk CPU cost of a streamed token on its way from the engine to the client.

Before (strings): vLLM's SSE string crossed Ray as is; the gateway re-parsed it when the
answer was recorded or the key metered (``Transcript``), and on the first event (trace).
After (typed): the vLLM engine parses each string once into a ``StreamChunk``; its dict
crosses Ray and is typed again by ``ServeBackend.stream``; the gateway writes it once
(``chunk_event``). Ray's transport is its own serializer, run here without a cluster:
msgpack for plain values, cloudpickle (pickle protocol 5) for anything else, as
``ray._private.serialization`` does.

Run: ``.venv/bin/python bench/sse_chunks.py`` (no GPU, no Ray cluster; a few seconds).
"""

from __future__ import annotations

import json
import pickle
import timeit
from typing import Any

import ray.cloudpickle as cloudpickle
from pydantic_core import from_json
from ray._raylet import MessagePackSerializer

from qingliang.platform.gateway.sse import Transcript, chunk_event
from qingliang.serving.engine import StreamChunk

#: A typical vLLM chat delta as vLLM writes it (``model_dump_json(exclude_unset=True)``).
EVENT = (
    'data: {"id":"chatcmpl-8f1c2e","object":"chat.completion.chunk","created":1733550000,'
    '"model":"qwen-coder","choices":[{"index":0,"delta":{"content":" 街道"},'
    '"logprobs":null,"finish_reason":null}]}\n\n'
)


def over_ray(value: Any) -> Any:
    """``value`` serialized and read back as Ray does for an object it sends."""
    others: list[Any] = []

    def keep(o: Any) -> int:
        others.append(o)
        return len(others) - 1

    packed = MessagePackSerializer.dumps(value, keep)
    pickled = cloudpickle.dumps(others, protocol=5) if others else None
    back = pickle.loads(pickled) if pickled else []
    return MessagePackSerializer.loads(packed, lambda i: back[i])


def before(recorded: bool) -> str:
    wire = over_ray(EVENT)
    if recorded:  # Transcript.feed(chunk) parsed every chunk
        Transcript().feed(json.loads(wire[6:]))
    return wire


def after(recorded: bool) -> str:
    chunk = StreamChunk.of(from_json(EVENT[6:]))  # in the engine
    chunk = StreamChunk.of(over_ray(chunk.data))  # over Ray, typed again in ServeBackend
    if recorded:
        Transcript().feed(chunk.data)
    return chunk_event(chunk.data)  # in the gateway


def main() -> None:
    n = 30_000
    assert after(True) == before(True)
    for recorded in (False, True):
        for name, fn in (("strings (before)", before), ("typed (after)", after)):
            best = min(timeit.repeat(lambda fn=fn, r=recorded: fn(r), number=n, repeat=5))
            label = "recorded/metered" if recorded else "plain"
            print(f"{label:17} {name:17} {best / n * 1e6:6.2f} µs per chunk")
    data = json.loads(EVENT[6:])
    for name, item in (("str", EVENT), ("dict", data), ("StreamChunk", StreamChunk(data))):
        best = min(timeit.repeat(lambda i=item: over_ray(i), number=n, repeat=5))
        print(f"over Ray alone    {name:17} {best / n * 1e6:6.2f} µs per chunk")


if __name__ == "__main__":
    main()
