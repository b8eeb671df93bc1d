"""OpenAI's model list and embeddings: ``/v1/models``, ``/v1/models/{id}``, ``/v1/embeddings``.

Example:
    >>> add_model_routes(app, backend, embedder)               # doctest: +SKIP
    >>> add_embedding_routes(app, embedder, quotas)            # doctest: +SKIP
"""

from __future__ import annotations

import base64
import struct

from fastapi import FastAPI, Request

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.backend import Backend, Embedder
from qingliang.platform.gateway.http.bodies import refuse_unknown, request_body
from qingliang.platform.gateway.http.limits import json_body
from qingliang.platform.gateway.http.openai_bodies import EmbeddingBody, checked
from qingliang.serving.token_ids import decode_token_ids, is_token_ids


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def add_model_routes(app: FastAPI, backend: Backend, embedder: Embedder | None) -> None:
    """Add ``/v1/models`` (deployments, their adapters, the embedding model) to ``app``."""

    @app.get("/v1/models")
    async def models() -> dict:
        data = []
        for m in backend.models():
            meta = {"labels": m.labels, "description": m.description}
            data.append(
                {
                    "id": m.name,
                    "object": "model",
                    "created": m.created,
                    "owned_by": "qingliang",
                    **meta,
                }
            )
            for a in m.adapters:
                data.append(
                    {
                        "id": f"{m.name}:{a}",
                        "object": "model",
                        "created": m.created,
                        "owned_by": "qingliang",
                        "parent": m.name,
                    }
                )
        if embedder is not None:
            data.append(
                {
                    "id": embedder.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "qingliang",
                    # Not a chat model: clients (the console) leave it out of chat pickers.
                    "endpoints": ["/v1/embeddings"],
                }
            )
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        listed = await models()
        for item in listed["data"]:
            if item["id"] == model_id:
                return item
        raise NotFound(f"model {model_id!r} does not exist", param="model", code="model_not_found")


def add_embedding_routes(app: FastAPI, embedder: Embedder | None, quotas: Quotas) -> None:
    """Add ``/v1/embeddings`` (the packaged embedding model) to ``app``."""

    @app.post("/v1/embeddings", openapi_extra=request_body(EmbeddingBody))
    async def embeddings(request: Request) -> dict:
        """OpenAI's embeddings; unknown fields are a 400 naming them. ``input`` may be
        cl100k_base token ids, decoded to the text they stand for (docs/openai.md)."""
        if embedder is None:
            raise NotFound("no embedding model is configured on this gateway")
        body = await json_body(request)
        refuse_unknown(EmbeddingBody, body)
        if body.get("model") != embedder.model_id:
            raise NotFound(
                f"embedding model {body.get('model')!r} does not exist; use {embedder.model_id!r}",
                param="model",
                code="model_not_found",
            )
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        elif is_token_ids(texts):  # OpenAI's clients (LangChain by default) send cl100k ids
            texts = decode_token_ids(texts)
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest(
                "`input` must be a non-empty string, list of strings, or token ids", param="input"
            )
        if len(texts) > 2048:
            raise BadRequest(f"`input` has {len(texts)} items; at most 2048", param="input")
        # The official openai client sends encoding_format "base64" unless told otherwise.
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(
                "`encoding_format` must be 'float' or 'base64'", param="encoding_format"
            )
        if body.get("dimensions") not in (None, 384):
            raise BadRequest(
                "this model has 384 dimensions; `dimensions` cannot change it", param="dimensions"
            )
        # Without input_type every text gets e5's "query: " prefix, which its authors advise
        # for symmetric similarity (text against text); retrieval asks passage/query.
        input_type = body.get("input_type") or "query"
        if input_type not in ("query", "passage"):
            raise BadRequest("`input_type` must be 'query' or 'passage'", param="input_type")
        checked(body, EmbeddingBody)  # the types of the rest (`user`)
        vectors, tokens = await embedder.embed(texts, input_type)
        await quotas.charge(getattr(request.state, "principal", None), tokens)
        return {
            "object": "list",
            "model": embedder.model_id,
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64_floats(v) if encoding == "base64" else v,
                }
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
