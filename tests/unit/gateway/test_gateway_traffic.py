"""Canary traffic in the gateway: how bare-deployment requests are split between adapters
and the base model, and how every answer says which adapter made it.

The app runs over a small fake Backend that records the adapter each request was sent
to (Starlette's TestClient, no Ray, no sockets).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qingliang.platform.errors import ApiError, Saturated
from qingliang.platform.gateway.app import create_app
from qingliang.serving.engine import StreamChunk
from qingliang.serving.traffic import ModelEntry, choose_adapter

SUPPORT = ModelEntry(
    "support",
    ("v3", "v4", "v5"),
    traffic={"v4": 0.2},
    refs={"v4": "support-bot@4", "v5": "support-bot@5"},
)
PLAIN = ModelEntry("plain")


def within_5_sigma(hits: int, n: int, p: float) -> bool:
    """Whether ``hits`` of ``n`` draws at probability ``p`` is a plausible binomial count
    (5 standard deviations: a correct split fails about once in 1.7 million runs)."""
    return abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p))


class RecordingBackend:
    """Answers every request; records which adapter it went to."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self.sent: list[str | None] = []
        self.rejections: list[tuple] = []
        self.error: ApiError | None = None

    def models(self) -> list[ModelEntry]:
        return list(self.entries)

    async def generate(self, deployment: str, endpoint: str, body: dict, adapter: str | None):
        self.sent.append(adapter)
        if self.error is not None:
            raise self.error
        text = {"chat": {"message": {"role": "assistant", "content": "ok"}}, "completion": {}}
        return {"object": endpoint, "model": body["model"], "choices": [text[endpoint]]}

    async def stream(
        self, deployment: str, endpoint: str, body: dict, adapter: str | None
    ) -> AsyncIterator[StreamChunk]:
        self.sent.append(adapter)
        if self.error is not None:
            raise self.error
        for piece in ("Hel", "lo"):
            event = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": piece}}]}
            yield StreamChunk.of(event)

    async def ready(self) -> dict[str, str]:
        return {e.name: "ready" for e in self.entries}

    def rejected(self, deployment: str, adapter: str | None, endpoint: str) -> None:
        self.rejections.append((deployment, adapter, endpoint))


class NoAuth:
    enabled = False

    def verify(self, token: str) -> Any:
        return None


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend([SUPPORT, PLAIN])


@pytest.fixture
def client(backend: RecordingBackend) -> Iterator[TestClient]:
    with TestClient(create_app(backend, None, NoAuth())) as c:
        yield c


def chat(client: TestClient, model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


# ----------------------------------------------------------------- choosing the arm


def test_share_of_random_requests_is_binomial() -> None:
    arms = Counter(choose_adapter(SUPPORT) for _ in range(4000))
    assert set(arms) == {"v4", None}
    assert within_5_sigma(arms["v4"], 4000, 0.2), arms


def test_share_of_distinct_users_is_binomial() -> None:
    arms = Counter(choose_adapter(SUPPORT, f"user-{i}") for i in range(4000))
    assert set(arms) == {"v4", None}
    assert within_5_sigma(arms["v4"], 4000, 0.2), arms


def test_several_adapters_get_their_own_shares() -> None:
    entry = ModelEntry("support", ("v3", "v4", "v5"), traffic={"v5": 0.1, "v3": 0.5, "v4": 0.3})
    arms = Counter(choose_adapter(entry, f"u{i}") for i in range(4000))
    for arm, p in (("v3", 0.5), ("v4", 0.3), ("v5", 0.1), (None, 0.1)):
        assert within_5_sigma(arms[arm], 4000, p), (arm, arms)


def test_full_shares_leave_nothing_for_the_base_model() -> None:
    entry = ModelEntry("support", ("v3", "v4"), traffic={"v3": 0.7, "v4": 0.3})
    assert None not in {choose_adapter(entry) for _ in range(2000)}
    assert {choose_adapter(entry) for _ in range(2000)} == {"v3", "v4"}


def test_one_user_stays_on_one_arm() -> None:
    arms = {u: choose_adapter(SUPPORT, u) for u in (f"user-{i}" for i in range(200))}
    assert set(arms.values()) == {"v4", None}  # both arms are used ...
    for user, arm in arms.items():  # ... and each user always lands on the same one
        assert {choose_adapter(SUPPORT, user) for _ in range(5)} == {arm}


def test_a_users_arm_differs_between_deployments() -> None:
    """The hash includes the deployment: a user is not the canary everywhere at once."""
    other = ModelEntry("billing", ("v4",), traffic={"v4": 0.2})
    users = [f"user-{i}" for i in range(400)]
    on_support = {u for u in users if choose_adapter(SUPPORT, u) == "v4"}
    on_billing = {u for u in users if choose_adapter(other, u) == "v4"}
    assert on_support and on_billing and on_support != on_billing


def test_no_traffic_means_the_base_model() -> None:
    assert {choose_adapter(PLAIN, f"u{i}") for i in range(100)} == {None}


# -------------------------------------------------------------------- over HTTP


def test_bare_requests_are_split_by_user(client: TestClient, backend: RecordingBackend) -> None:
    for i in range(1000):
        r = chat(client, "support", user=f"customer-{i}")
        assert r.headers["x-qingliang-adapter"] == (backend.sent[-1] or "")
    arms = Counter(backend.sent)
    assert set(arms) == {"v4", None}
    assert within_5_sigma(arms["v4"], 1000, 0.2), arms


def test_sticky_user_over_http(client: TestClient, backend: RecordingBackend) -> None:
    for user in ("alice", "bob", "carol", "dave", "erin"):
        arms = {
            chat(client, "support", user=user).headers["x-qingliang-adapter"] for _ in range(10)
        }
        assert arms == {choose_adapter(SUPPORT, user) or ""}


def test_a_non_string_user_is_refused_and_never_hashed(
    client: TestClient, backend: RecordingBackend
) -> None:
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "user": 7}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "user"
    assert backend.sent == []
    # choose_adapter itself draws at random for a user that is not a string.
    assert {choose_adapter(SUPPORT, 7) for _ in range(200)} == {"v4", None}


def test_explicit_adapter_bypasses_the_shares(
    client: TestClient, backend: RecordingBackend
) -> None:
    for _ in range(50):
        chat(client, "support:v5")
        chat(client, "support:v3", user="customer-1")
    assert backend.sent == ["v5", "v3"] * 50


def test_json_answer_names_adapter_and_ref(client: TestClient, backend: RecordingBackend) -> None:
    r = chat(client, "support:v5")
    assert r.headers["x-qingliang-deployment"] == "support"
    assert r.headers["x-qingliang-adapter"] == "v5"
    assert r.headers["x-qingliang-adapter-ref"] == "support-bot@5"
    body = r.json()
    assert body["qingliang"] == {
        "deployment": "support",
        "adapter": "v5",
        "adapter_ref": "support-bot@5",
    }
    assert body["choices"][0]["message"]["content"] == "ok"  # the answer itself is intact


def test_json_answer_of_the_base_model(client: TestClient) -> None:
    r = chat(client, "plain")
    assert r.headers["x-qingliang-deployment"] == "plain"
    assert r.headers["x-qingliang-adapter"] == ""
    assert r.headers["x-qingliang-adapter-ref"] == ""
    assert r.json()["qingliang"] == {"deployment": "plain", "adapter": None, "adapter_ref": None}


def test_adapter_without_ref(client: TestClient) -> None:
    r = chat(client, "support:v3")
    assert r.headers["x-qingliang-adapter"] == "v3"
    assert r.headers["x-qingliang-adapter-ref"] == ""
    assert r.json()["qingliang"]["adapter_ref"] is None


def test_split_answers_name_the_arm_taken(client: TestClient, backend: RecordingBackend) -> None:
    seen = set()
    for i in range(100):
        r = chat(client, "support", user=f"u{i}")
        trace = r.json()["qingliang"]
        assert trace["adapter"] == backend.sent[-1]
        assert trace["adapter_ref"] == ("support-bot@4" if trace["adapter"] == "v4" else None)
        assert r.headers["x-qingliang-adapter-ref"] == (trace["adapter_ref"] or "")
        seen.add(trace["adapter"])
    assert seen == {"v4", None}


def test_completions_are_traced_too(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "support:v4", "prompt": "x"})
    assert r.status_code == 200
    assert r.headers["x-qingliang-adapter-ref"] == "support-bot@4"
    assert r.json()["qingliang"]["adapter"] == "v4"


def test_stream_first_event_names_the_adapter(client: TestClient) -> None:
    body = {"model": "support:v4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["x-qingliang-adapter"] == "v4"
        assert r.headers["x-qingliang-adapter-ref"] == "support-bot@4"
        assert r.headers["x-qingliang-deployment"] == "support"
        events = [e for e in "".join(r.iter_text()).split("\n\n") if e]
    first, second, done = (e.removeprefix("data: ") for e in events)
    assert json.loads(first)["qingliang"] == {
        "deployment": "support",
        "adapter": "v4",
        "adapter_ref": "support-bot@4",
    }
    assert json.loads(first)["choices"][0]["delta"]["content"] == "Hel"
    assert "qingliang" not in json.loads(second)  # only the first event carries it
    assert done == "[DONE]"


def test_stream_of_the_base_model(client: TestClient) -> None:
    r = chat(client, "plain", stream=True)
    assert r.headers["x-qingliang-adapter"] == ""
    first = json.loads(r.text.split("\n\n")[0].removeprefix("data: "))
    assert first["qingliang"] == {"deployment": "plain", "adapter": None, "adapter_ref": None}


def test_rejection_is_counted_for_the_chosen_adapter(
    client: TestClient, backend: RecordingBackend
) -> None:
    backend.entries = [ModelEntry("support", ("v4",), traffic={"v4": 1.0})]
    backend.error = Saturated("busy", retry_after=1)
    for stream in (False, True):
        body = {
            "model": "support",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
        }
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 429
        assert set(r.json()) == {"error"}  # the OpenAI error shape, nothing added
    assert backend.rejections == [("support", "v4", "chat")] * 2


# ----------------------------------------------------------------- aliases

ALIASED = ModelEntry(
    "desk",
    ("gov-v1", "gov-v2", "health-v1"),
    traffic={},
    refs={"gov-v1": "gov@1", "gov-v2": "gov@2", "health-v1": "health@1"},
    aliases={"gov": {"gov-v1": 0.75, "gov-v2": 0.25}, "health": {"health-v1": 1.0}, "plant": {}},
)


def test_an_alias_splits_its_own_requests_by_its_shares() -> None:
    from qingliang.serving.traffic import resolve_adapter

    arms = Counter(resolve_adapter(ALIASED, "gov", f"citizen-{i}") for i in range(2000))
    assert set(arms) == {"gov-v1", "gov-v2"}
    assert within_5_sigma(arms["gov-v2"], 2000, 0.25)
    assert resolve_adapter(ALIASED, "gov", "citizen-7") == resolve_adapter(
        ALIASED, "gov", "citizen-7"
    )
    assert resolve_adapter(ALIASED, "health", None) == "health-v1"
    assert resolve_adapter(ALIASED, "plant", "x") is None  # nothing promoted yet: base model
    assert resolve_adapter(ALIASED, None, "x") is None  # the bare deployment has no canary


def test_answers_through_an_alias_name_it_and_the_adapter_taken() -> None:
    backend = RecordingBackend([ALIASED])
    with TestClient(create_app(backend, None, NoAuth())) as client:
        r = chat(client, "desk:health")
        assert r.json()["qingliang"] == {
            "deployment": "desk",
            "adapter": "health-v1",
            "adapter_ref": "health@1",
            "alias": "health",
        }
        assert r.headers["x-qingliang-alias"] == "health"
        assert r.headers["x-qingliang-adapter"] == "health-v1"
        plain = chat(client, "desk:plant")
        assert plain.json()["qingliang"]["adapter"] is None
        assert plain.headers["x-qingliang-alias"] == "plant"
        direct = chat(client, "desk:gov-v2")  # a version by its own name: no alias
        assert "alias" not in direct.json()["qingliang"]
        assert "x-qingliang-alias" not in direct.headers
        missing = client.post(
            "/v1/chat/completions",
            json={"model": "desk:factory", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert backend.sent == ["health-v1", None, "gov-v2"]
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    assert "'factory'" in message and "plant (alias)" in message and "gov-v1" in message
