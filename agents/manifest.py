"""The ``AgentGraph`` manifest kind: agents, their tools, the topology and its limits.

A graph is a set of named **nodes** starting at ``entry``; each node does one thing:

- ``agent``: one agent (a model with a system prompt, tools and knowledge bases) answers;
- ``router``: the learned policy picks one of ``routes`` (nodes) — or, with ``agent`` and
  ``models``, which model / adapter runs that agent;
- ``parallel``: ``branches`` run at the same time, then ``next`` sees all their answers;
- ``approval``: a human approves, edits or rejects when the ``when`` condition holds;
- ``tool``: a tool runs on what earlier nodes produced (e.g. submit the filled form);
- ``graph``: another AgentGraph runs as a nested graph.

Sequential steps are nodes chained by ``next`` (absent: the run ends there).

Validation is pure and covers the graph as a whole: unknown agents, tools, nodes and
routes, nodes that cannot be reached from ``entry`` and loops that never reach the end
are errors that name the field (``spec.nodes[2].next: unknown node 'reviw' (did you mean
'review'?)``). Whether a model deployment, knowledge base, database or nested graph exists
is checked when the manifest is applied.

Example:
    >>> from qingliang.agents.manifest import AgentGraph
    >>> g = AgentGraph.model_validate({
    ...     "apiVersion": "qingliang.io/v1", "kind": "AgentGraph",
    ...     "metadata": {"name": "desk"},
    ...     "spec": {"agents": [{"name": "helper", "model": "qwen-coder"}],
    ...              "nodes": [{"name": "answer", "type": "agent", "agent": "helper"}]}})
    >>> g.spec.entry_node, g.spec.limits.max_steps, g.spec.checkpointer.kind
    ('answer', 25, 'sqlite')
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from qingliang.agents.tools.specs import END, Id, Tool, valid_id, valid_regex
from qingliang.knowledge.manifest import ENV_NAME_RE, LABEL_RE
from qingliang.platform.errors import did_you_mean
from qingliang.platform.manifests.base import (
    BaseMetadata,
    Envelope,
    MetadataLabels,
    Strict,
    valid_name,
)
from qingliang.serving.manifest import ADAPTER_RE


def valid_model_ref(v: str) -> str:
    """``deployment`` or ``deployment:adapter`` (checked against the platform on apply)."""
    dep, sep, adapter = v.partition(":")
    valid_name(dep)
    if sep and not ADAPTER_RE.match(adapter):
        raise ValueError(f"{v!r}: {adapter!r} is not a valid adapter name")
    return v


class Metadata(BaseMetadata):
    name: str = Field(description="Graph name: the `{name}` in `POST /v1/agents/{name}/runs`.")
    labels: MetadataLabels = Field(
        default_factory=dict, description="Free labels (team, domain, owner)."
    )
    description: str = Field(default="", description="Shown in `qingliang agents list`.")


class Agent(Strict):
    name: Id = Field(description="Agent name, referenced by nodes (`agent: <name>`).")
    role: str = Field(
        default="",
        max_length=500,
        description="One line on what this agent is for; shown to routers and to agents that "
        "call it as a tool.",
    )
    model: str = Field(
        description="Model deployment serving this agent: `deployment` or `deployment:adapter`."
    )
    system: str = Field(default="", max_length=20_000, description="System prompt.")
    tools: list[Id] = Field(
        default_factory=list, description="Names of `spec.tools` this agent may call."
    )
    knowledge: list[Id] = Field(
        default_factory=list,
        description="Knowledge bases searched with the request before the model answers; "
        "the hits go into the prompt and come back as citations.",
    )
    knowledge_limit: int = Field(default=4, ge=1, le=20, description="Hits per knowledge base.")
    max_tokens: int = Field(default=256, ge=1, le=32_768, description="Per model call.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    max_tool_rounds: int = Field(
        default=3, ge=0, le=20, description="Model ↔ tool round trips before it must answer."
    )
    images: Literal["names", "ocr", "native"] = Field(
        default="names",
        description="What the model gets of the run's image attachments: names (their file "
        "names only; the ocr tool reads them on demand), ocr (the text read in each, in the "
        "prompt where the image was), native (the images themselves: the model must be a "
        "vision-language deployment, spec.multimodal.image native).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return valid_id(v, "agent name")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return valid_model_ref(v)


class ApprovalCondition(Strict):
    always: bool = Field(default=False, description="Always ask.")
    tools: list[Id] = Field(
        default_factory=list, description="Ask when the run has called one of these tools."
    )
    routes: list[Id] = Field(
        default_factory=list, description="Ask when a router chose one of these arms."
    )
    pattern: str | None = Field(
        default=None, description="Ask when the latest answer matches this regular expression."
    )
    input_pattern: str | None = Field(
        default=None,
        description=(
            "Ask when the run's request text matches this regular expression (gates a "
            "request before any answer is written, e.g. red flags)."
        ),
    )
    tokens_over: int | None = Field(
        default=None, ge=0, description="Ask when the run has used more tokens than this."
    )

    @field_validator("pattern", "input_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        return valid_regex(v)

    @model_validator(mode="after")
    def _some(self) -> ApprovalCondition:
        if not (
            self.always
            or self.tools
            or self.routes
            or self.pattern
            or self.input_pattern
            or self.tokens_over
        ):
            raise ValueError(
                "give at least one condition (always, tools, routes, pattern, input_pattern, ...)"
            )
        return self


class Node(Strict):
    name: Id = Field(description="Node name (events and `next` use it).")
    type: Literal["agent", "router", "parallel", "approval", "tool", "graph"] = Field(
        description="What the node does (see the module documentation)."
    )
    next: str | None = Field(default=None, description="The node after this one; absent: end.")
    agent: Id | None = Field(default=None, description="agent / router-over-models: the agent.")
    routes: list[Id] = Field(default_factory=list, description="router: the nodes it picks from.")
    models: list[str] = Field(
        default_factory=list,
        description="router: the models (`deployment[:adapter]`) it picks from to run `agent`.",
    )
    branches: list[Id] = Field(default_factory=list, description="parallel: the nodes it runs.")
    when: ApprovalCondition = Field(
        default_factory=lambda: ApprovalCondition(always=True),
        description="approval: when to ask (default: always).",
    )
    prompt: str = Field(default="Approve this answer?", description="approval: the question.")
    on_reject: str | None = Field(
        default=None, description="approval: node to go to on rejection; absent: the run ends."
    )
    on_skip: str | None = Field(
        default=None,
        description="approval: node to go to when `when` does not hold (nothing to approve, "
        "e.g. no form was filled), `end` to end the run there; absent: `next`.",
    )
    allow_self_approval: bool = Field(
        default=False,
        description="approval: whether the key that started the run may answer it "
        "(default: another key with the `approve` scope must).",
    )
    tool: Id | None = Field(default=None, description="tool: which of `spec.tools` runs.")
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="tool: fixed arguments; a `submit` tool takes the form the run filled.",
    )
    graph: str | None = Field(default=None, description="graph: the nested AgentGraph.")
    router: RouterSettings | None = Field(
        default=None, description="router: settings overriding `spec.router` for this node."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return valid_id(v, "node name")

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        return [valid_model_ref(m) for m in v]

    @model_validator(mode="after")
    def _fields_of_type(self) -> Node:
        needs = {
            "agent": ("agent",),
            "router": (),
            "parallel": ("branches",),
            "approval": (),
            "tool": ("tool",),
            "graph": ("graph",),
        }[self.type]
        for key in needs:
            if not getattr(self, key):
                raise ValueError(f"a {self.type} node needs `{key}`")
        own = {
            "agent": {"agent"},
            "router": {"routes", "models", "agent", "router"},
            "parallel": {"branches"},
            "approval": {"when", "prompt", "on_reject", "on_skip", "allow_self_approval"},
            "tool": {"tool", "arguments"},
            "graph": {"graph"},
        }[self.type]
        for key in (
            "agent",
            "routes",
            "models",
            "branches",
            "on_reject",
            "on_skip",
            "tool",
            "graph",
            "allow_self_approval",
        ):
            if key not in own and getattr(self, key):
                raise ValueError(f"`{key}` does not apply to a {self.type} node")
        if self.type == "router":
            if bool(self.routes) == bool(self.models):
                raise ValueError("a router picks from `routes` (nodes) or `models`, not both")
            if self.models and not self.agent:
                raise ValueError("a router over `models` needs the `agent` they run")
            if self.routes and self.agent:
                raise ValueError("`agent` applies to a router over `models` only")
            arms = self.routes or self.models
            if len(arms) < 2 or len(set(arms)) != len(arms):
                raise ValueError("a router needs at least two distinct arms")
            if self.routes and self.next:
                raise ValueError("a router over `routes` continues at the route it picks")
        if self.type == "parallel" and (len(self.branches) < 2 or len(set(self.branches)) < 2):
            raise ValueError("a parallel node needs at least two distinct branches")
        return self


class RewardSettings(Strict):
    feedback: float = Field(default=1.0, ge=0, description="Weight of explicit feedback (-1..1).")
    approval: float = Field(
        default=1.0, ge=0, description="Weight of human approval (1), edit (0.5), rejection (-1)."
    )
    success: float = Field(
        default=1.0, ge=0, description="Weight of the run finishing (1) or not (0)."
    )
    latency: float = Field(default=0.0, ge=0, description="Subtracted per second of run time.")
    cost: float = Field(default=0.0, ge=0, description="Subtracted per 1,000 tokens.")


class RouterSettings(Strict):
    algorithm: Literal["linucb", "thompson"] = Field(
        default="linucb", description="Contextual bandit."
    )
    alpha: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description="Exploration strength in units of the estimated reward noise: LinUCB's "
        "bound width (default 1.0) or Thompson's posterior scale (default 0.5).",
    )
    floor: float = Field(
        default=0.05, ge=0, le=1, description="Share of requests routed uniformly at random."
    )
    frozen: bool = Field(default=False, description="Route, but do not learn.")
    prior: dict[str, float] = Field(
        default_factory=dict, description="Cold-start mean reward per arm."
    )
    prior_weight: float = Field(default=1.0, gt=0, description="Prior as pseudo-observations.")
    seed: int | None = Field(default=0, description="Random seed (null: from the system).")
    domains: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, description="Domain labels the features one-hot encode."
    )
    embedding_dims: int = Field(default=8, ge=0, le=64, description="Reduced query embedding.")
    reward: RewardSettings = Field(default_factory=RewardSettings, description="Reward weights.")
    feedback_window_s: float = Field(
        default=0.0, ge=0, description="Wait this long for feedback before learning (0: at end)."
    )
    examples: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="JSONL of labelled requests (`text`, `route`, optional `domain`) taught "
        "before the first decision (warm start); relative to the manifest's folder.",
    )

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            if not LABEL_RE.match(d):
                raise ValueError(f"{d!r} is not a valid domain label")
        return v


class Limits(Strict):
    max_steps: int = Field(default=25, ge=1, le=1000, description="Node executions per run.")
    timeout_s: float = Field(default=300.0, gt=0, le=86_400, description="Run time (paused excl.).")
    token_budget: int | None = Field(
        default=None, ge=1, description="Model tokens per run; the run stops when spent."
    )


class Checkpointer(Strict):
    kind: Literal["sqlite", "postgres"] = Field(
        default="sqlite", description="`sqlite` in the data directory, or PostgreSQL."
    )
    dsn_env: str | None = Field(
        default=None, description="postgres: environment variable holding the DSN (not the DSN)."
    )

    @field_validator("dsn_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _dsn(self) -> Checkpointer:
        if self.kind == "postgres" and not self.dsn_env:
            raise ValueError("a postgres checkpointer needs `dsn_env`")
        if self.kind == "sqlite" and self.dsn_env:
            raise ValueError("`dsn_env` applies to kind postgres only")
        return self


class AgentGraphSpec(Strict):
    agents: list[Agent] = Field(default_factory=list, description="The agents.")
    tools: list[Tool] = Field(default_factory=list, description="Tools agents and nodes use.")
    nodes: list[Node] = Field(min_length=1, description="The topology.")
    entry: str | None = Field(default=None, description="First node; absent: the first listed.")
    router: RouterSettings = Field(
        default_factory=RouterSettings, description="Defaults for every router node."
    )
    limits: Limits = Field(default_factory=Limits, description="Per-run limits.")
    checkpointer: Checkpointer = Field(
        default_factory=Checkpointer, description="Where run state is saved."
    )

    @property
    def entry_node(self) -> str:
        return self.entry or self.nodes[0].name

    @model_validator(mode="after")
    def _whole_graph(self) -> AgentGraphSpec:
        problems = check_graph(self)
        if problems:
            # One line per field; the loader reports each at spec.<field> (FIELD_PREFIX).
            raise ValueError("\n".join("@" + p for p in problems))
        return self

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def agent(self, name: str) -> Agent:
        return next(a for a in self.agents if a.name == name)

    def tool(self, name: str) -> Any:
        return next(t for t in self.tools if t.name == name)


class AgentGraph(Envelope):
    kind: Literal["AgentGraph"] = Field(description="Always `AgentGraph`.")
    metadata: Metadata = Field(description="Name, labels and description.")
    spec: AgentGraphSpec = Field(description="Agents, tools, nodes, router, limits.")


def _unknown(what: str, value: str, known: list[str]) -> str:
    more = did_you_mean(value, known)
    listed = f"; known: {', '.join(known)}" if known else f"; none declared in spec.{what}s"
    return f"unknown {what} {value!r}{more}{listed}"


def successors(node: Node) -> list[str]:
    """Where control can go after ``node`` (``end`` included)."""
    if node.type == "router" and node.routes:
        return list(node.routes)
    out = [node.next or END]
    if node.type == "parallel":
        out += node.branches
    if node.type == "approval":
        out.append(node.on_reject or END)
        if node.on_skip is not None:
            out.append(node.on_skip)
    return out


def check_graph(spec: AgentGraphSpec) -> list[str]:
    """Every whole-graph problem of ``spec``, each naming its field (empty when sound)."""
    problems: list[str] = []
    for kind, items in (("agent", spec.agents), ("tool", spec.tools), ("node", spec.nodes)):
        names = [i.name for i in items]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{kind}s: duplicate name {dup!r}")
    if problems:
        return problems
    problems = _reference_problems(spec)
    for i, n in enumerate(spec.nodes):
        problems += _node_problems(spec, i, n)
    if spec.router.prior and not any(n.type == "router" for n in spec.nodes):
        problems.append("router.prior: there is no router node")
    if problems:
        return problems
    return _flow_problems(spec)


def _reference_problems(spec: AgentGraphSpec) -> list[str]:
    """Agents' tools, submit tools' forms and the entry that name nothing declared."""
    problems: list[str] = []
    tools = {t.name: t for t in spec.tools}
    for i, a in enumerate(spec.agents):
        for j, t in enumerate(a.tools):
            if t not in tools:
                problems.append(f"agents[{i}].tools[{j}]: {_unknown('tool', t, list(tools))}")
            elif tools[t].kind == "submit":
                problems.append(
                    f"agents[{i}].tools[{j}]: {t!r} is a submit tool; it runs in a `tool` node "
                    "after an approval, not at the model's choice"
                )
    for i, t in enumerate(spec.tools):
        if t.kind == "submit" and (t.form not in tools or tools[t.form].kind != "form"):
            forms = [n for n, x in tools.items() if x.kind == "form"]
            problems.append(f"tools[{i}].form: {_unknown('form tool', t.form, forms)}")
    node_names = [n.name for n in spec.nodes]
    if spec.entry is not None and spec.entry not in node_names:
        problems.append(f"entry: {_unknown('node', spec.entry, node_names)}")
    return problems


def _node_problems(spec: AgentGraphSpec, i: int, n: Node) -> list[str]:
    """What node ``i`` (``n``) names that is not declared, or may not be used there."""
    problems: list[str] = []
    agents = [a.name for a in spec.agents]
    tools = [t.name for t in spec.tools]
    nodes = {x.name: x for x in spec.nodes}
    node_names = list(nodes)
    at = f"nodes[{i}]"
    if n.agent and n.agent not in agents:
        problems.append(f"{at}.agent: {_unknown('agent', n.agent, agents)}")
    if n.tool and n.tool not in tools:
        problems.append(f"{at}.tool: {_unknown('tool', n.tool, tools)}")
    for key in ("routes", "branches"):
        for j, target in enumerate(getattr(n, key)):
            if target not in nodes:
                problems.append(f"{at}.{key}[{j}]: {_unknown('node', target, node_names)}")
            elif target == n.name:
                problems.append(f"{at}.{key}[{j}]: a node cannot route to itself")
    for key in ("next", "on_reject", "on_skip"):
        target = getattr(n, key)
        if target is not None and target != END and target not in nodes:
            problems.append(f"{at}.{key}: {_unknown('node', target, node_names + [END])}")
    if n.router is not None and n.type != "router":
        problems.append(f"{at}.router: applies to router nodes only")
    for arm in (n.router or spec.router).prior if n.type == "router" else ():
        if arm not in (n.routes or n.models):
            problems.append(f"{at}: router prior names {arm!r}, which is not one of its arms")
    for j, b in enumerate(n.branches):
        branch = nodes.get(b)
        if branch is None:
            continue
        if branch.type not in ("agent", "tool", "graph"):
            problems.append(
                f"{at}.branches[{j}]: a parallel branch is an agent, tool or graph node, "
                f"not a {branch.type} node"
            )
        elif branch.next is not None:
            problems.append(
                f"nodes[{node_names.index(b)}].next: {b!r} is a branch of {n.name!r}, which "
                "decides what follows; remove its `next`"
            )
    return problems


def _flow_problems(spec: AgentGraphSpec) -> list[str]:
    """Nodes the entry cannot reach, and reachable ones with no way to the end."""
    problems: list[str] = []
    nodes = {n.name: n for n in spec.nodes}
    entry = spec.entry_node
    seen, stack = {entry}, [entry]
    while stack:
        for nxt in successors(nodes[stack.pop()]):
            if nxt != END and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    for i, n in enumerate(spec.nodes):
        if n.name not in seen:
            problems.append(f"nodes[{i}]: {n.name!r} cannot be reached from entry {entry!r}")
    exits = {END}
    changed = True
    while changed:
        changed = False
        for n in spec.nodes:
            if n.name not in exits and any(s in exits for s in successors(n)):
                exits.add(n.name)
                changed = True
    for i, n in enumerate(spec.nodes):
        if n.name in seen and n.name not in exits:
            problems.append(f"nodes[{i}]: {n.name!r} is in a loop that never reaches the end")
    return problems


Node.model_rebuild()
