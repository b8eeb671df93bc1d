"""The OpenAI-compatible HTTP API, as a plain FastAPI app over injected parts.

Routes: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` (streamed or not),
``/v1/models``, ``/v1/embeddings``, ``/healthz``, ``/readyz``. ``model`` names a
deployment or ``deployment:adapter``. A bare deployment with canary shares
(``spec.lora.traffic``) sends each request to one adapter or to the base model
(:func:`~qingliang.serving.traffic.choose_adapter`). Every generation answer says what
made it: headers ``X-Qingliang-Deployment``, ``X-Qingliang-Adapter`` and
``X-Qingliang-Adapter-Ref``, and a ``qingliang`` object in the JSON body (in the first
event of a stream). Errors use OpenAI's format
(``{"error": {"message", "type", "param", "code"}}``); a saturated deployment answers 429
with ``Retry-After``.

Every route's body is a pydantic model (:mod:`.http.bodies`, :mod:`.http.openai_bodies`)
that ``/openapi.json`` documents and the route checks after reading the body itself with
:func:`.http.limits.parse_json_body` (FastAPI never parses a body: its size and nesting are
bounded first). Documented OpenAI fields never break a client: those no engine
implements are dropped and named in ``X-Qingliang-Ignored-Fields``; unknown fields are
refused by name (see :mod:`.http.openai_bodies` for the whole policy).

This module only assembles the app: errors (:mod:`.http.errors`), the key and scope check
(:mod:`.auth.guard`), the generation routes (:mod:`.generation`), models and embeddings
(:mod:`.openai_routes`), and the knowledge, agent and pipeline routes (:mod:`.routes`).
It holds no Ray code: the :class:`~.backend.Backend` it is given does (serving's Serve
handles, see ``ingress.py``), so it is tested with a small fake backend and, in
integration, with the real one.

Example:
    >>> app = create_app(backend, embedder, auth)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from qingliang.platform.gateway.auth.guard import has_valid_key, install_auth
from qingliang.platform.gateway.auth.keys import Auth
from qingliang.platform.gateway.auth.quotas import Quotas
from qingliang.platform.gateway.auth.scopes import ROUTES
from qingliang.platform.gateway.backend import Backend, Embedder
from qingliang.platform.gateway.console import add_console
from qingliang.platform.gateway.generation import add_generation_routes
from qingliang.platform.gateway.http.bodies import BODIES, install_openapi
from qingliang.platform.gateway.http.errors import install_error_handlers
from qingliang.platform.gateway.http.limits import BodyLimitMiddleware
from qingliang.platform.gateway.http.openai_bodies import OPENAI_BODIES
from qingliang.platform.gateway.http.responses_bodies import ResponsesBody
from qingliang.platform.gateway.openai_routes import add_embedding_routes, add_model_routes
from qingliang.platform.gateway.operator.demo_jobs import DemoJobs
from qingliang.platform.gateway.operator.operations import Operations
from qingliang.platform.gateway.responses import add_responses_routes
from qingliang.platform.gateway.routes.admin import ADMIN_BODIES, add_admin_routes
from qingliang.platform.gateway.routes.agents import AgentsBackend, add_agent_routes
from qingliang.platform.gateway.routes.demos import add_demo_routes
from qingliang.platform.gateway.routes.keys import add_key_routes
from qingliang.platform.gateway.routes.knowledge import KnowledgeBackend, add_knowledge_routes
from qingliang.platform.gateway.routes.logs import add_log_routes
from qingliang.platform.gateway.routes.ops import add_ops_routes
from qingliang.platform.gateway.routes.pipelines import add_pipeline_routes
from qingliang.platform.settings import GatewayLimits
from qingliang.platform.storage.conversations import ConversationLog

logger = logging.getLogger(__name__)


def create_app(
    backend: Backend,
    embedder: Embedder | None,
    auth: Auth,
    knowledge: KnowledgeBackend | None = None,
    agents: AgentsBackend | None = None,
    pipelines: Any | None = None,
    conversations: ConversationLog | None = None,
    limits: GatewayLimits | None = None,
    ops: Operations | None = None,
    demos: DemoJobs | None = None,
) -> FastAPI:
    """Build the gateway app. Nothing here touches Ray, disk or the network.

    ``knowledge`` serves the ``/v1/knowledge`` routes (see :mod:`.routes.knowledge`); without it
    they answer 501. ``agents`` serves ``/v1/agents`` and ``/v1/feedback`` (see
    :mod:`.routes.agents`); without it they answer 501. ``pipelines`` (a
    :class:`~qingliang.platform.lifecycle.pipelines.service.PipelineService`) serves
    ``/v1/pipelines`` (see :mod:`.routes.pipelines`); without it they answer 501.
    With ``conversations``, every answered ``/v1/chat/completions``, ``/v1/completions``
    and ``/v1/responses`` request (streamed ones when their stream ends normally) is
    appended to that log, one row per choice; errors are not.
    ``limits`` bound request bodies (413 over them, see :mod:`.http.limits`) and ``n``; by
    default :meth:`GatewayLimits.from_env`. ``ops`` serves the operator's routes
    (``/v1/deployments``, ``/v1/metrics/series``, ``/v1/manifests/...``, see
    :mod:`.routes.ops`) and ``demos`` ``/v1/demos`` (:mod:`.routes.demos`); without them
    they answer 501 (``/v1/whoami`` always answers).
    """
    limits = limits if limits is not None else GatewayLimits.from_env()
    quotas = Quotas(getattr(auth, "usage", None))
    app = FastAPI(title="Qingliang gateway", version="1", docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    install_auth(app, auth, quotas)
    add_generation_routes(app, backend, quotas, conversations, limits)
    add_responses_routes(app, backend, quotas, conversations)
    add_model_routes(app, backend, embedder)
    add_embedding_routes(app, embedder, quotas)
    _add_probes(app, backend, auth)
    add_knowledge_routes(app, knowledge, limits)
    add_agent_routes(app, agents, limits)
    add_pipeline_routes(app, pipelines)
    add_ops_routes(app, ops, auth)
    add_demo_routes(app, demos)
    add_key_routes(app, auth)
    add_admin_routes(app, ops, knowledge)
    add_log_routes(app, ops)
    add_console(app)
    install_openapi(
        app,
        (*OPENAI_BODIES, ResponsesBody, *BODIES, *ADMIN_BODIES),
        public=[r for r, rule in ROUTES.items() if rule.public],
    )
    # Added last, so outermost of our middleware: a body over its limit by
    # Content-Length is refused before authentication or anything else reads it.
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    return app


def _add_probes(app: FastAPI, backend: Backend, auth: Auth) -> None:
    """``/healthz`` (the process answers) and ``/readyz`` (every deployment answers)."""

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "time": time.time()}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        states = await backend.ready()
        ready = all(s == "ready" for s in states.values())
        answer: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        # Open to probes; deployment names only for a caller with a key (or no auth).
        if not auth.enabled or await has_valid_key(auth, request):
            answer["deployments"] = states
        return JSONResponse(answer, status_code=200 if ready else 503)
