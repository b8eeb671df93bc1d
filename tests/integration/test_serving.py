"""The serving path through real components: Ray Serve, vLLM's CPU build, the gateway,
driven with the official `openai` client and plain HTTP."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from _platform import Platform, tiny_manifest

from qingliang.platform.errors import ManifestError, ModelSourceError
from qingliang.platform.storage.keys import KeyStore

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hello there, how are you"}]


def _greedy(client: openai.OpenAI, model: str, n: int = 12) -> str:
    r = client.chat.completions.create(model=model, messages=HI, max_tokens=n, temperature=0)
    return r.choices[0].message.content or ""


def test_models_lists_deployments_adapters_and_embeddings(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"tiny", "tiny:a", "multilingual-e5-small"} <= ids


def test_chat_completion_answers_with_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=HI, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.model == "tiny"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0
    assert r.choices[0].message.content


def test_streaming_chunks_arrive_incrementally(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="tiny",
        messages=HI,
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    arrivals, text, usage = [], [], None
    for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 64
    # Many events (vLLM holds back a token that ends inside a UTF-8 sequence, so there
    # can be fewer events than tokens), and the first arrived well before the last:
    # streamed, not buffered and sent at the end.
    assert len(arrivals) >= 16
    assert arrivals[0] < arrivals[-1] - 0.05
    assert len(set(round(a, 3) for a in arrivals)) > 8
    greedy = _greedy(client, "tiny", 64)
    assert "".join(text) == greedy


def test_usage_chunk_only_when_asked(http: httpx.Client) -> None:
    body = {"model": "tiny", "messages": HI, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in e and '"choices":[]' in e.replace(" ", "") for e in events)


def test_completions_endpoint(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=5, temperature=0
    )
    assert r.choices[0].text and r.usage.completion_tokens <= 5


def test_embeddings_retrieve_across_languages(client: openai.OpenAI) -> None:
    passages = [
        "To apply for a business license, submit the registration form to the bureau.",
        "Matrix factorization decomposes a matrix into a product of matrices.",
        "营业执照申请需要提交身份证明和经营场所证明。",
    ]
    docs = client.embeddings.create(model="multilingual-e5-small", input=passages)
    query = client.embeddings.create(
        model="multilingual-e5-small",
        input="如何申请营业执照",
        extra_body={"input_type": "query"},
    )
    assert len(docs.data) == 3 and all(len(d.embedding) == 384 for d in docs.data)
    assert docs.usage.prompt_tokens > 0
    q = query.data[0].embedding
    scores = [sum(x * y for x, y in zip(q, d.embedding, strict=True)) for d in docs.data]
    # The Chinese question finds both the Chinese and the English licence passages
    # above the unrelated one.
    assert min(scores[0], scores[2]) > scores[1], scores


def test_embeddings_default_suits_similarity(client: openai.OpenAI) -> None:
    """Without input_type a paraphrase in another language is closer than an unrelated
    text in the same one (the passage prefix had it the other way round)."""
    texts = ["今天天气很好", "矿山设备维修", "The weather is nice today"]
    data = client.embeddings.create(model="multilingual-e5-small", input=texts).data
    weather, mining, english = (d.embedding for d in data)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(weather, english) > cos(weather, mining)


def test_adapter_changes_output_and_base_is_unchanged(client: openai.OpenAI) -> None:
    base = _greedy(client, "tiny")
    adapted = _greedy(client, "tiny:a")
    assert adapted != base
    assert _greedy(client, "tiny") == base


def test_canary_traffic_splits_bare_requests_and_answers_name_the_arm(
    platform: Platform, http: httpx.Client
) -> None:
    def ask(model: str, user: str | None = None, stream: bool = False) -> httpx.Response:
        body: dict = {"model": model, "messages": HI, "max_tokens": 12, "temperature": 0}
        body.update({"user": user} if user is not None else {})
        body.update({"stream": True} if stream else {})
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-qingliang-deployment"] == "tiny"
        return r

    def text(r: httpx.Response) -> str:
        return r.json()["choices"][0]["message"]["content"]

    replicas = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("tiny")}
    # With traffic set, bare `tiny` is split: take the base answer before setting it.
    plain = ask("tiny")
    base = text(plain)
    assert plain.headers["x-qingliang-adapter"] == ""
    assert plain.json()["qingliang"] == {"deployment": "tiny", "adapter": None, "adapter_ref": None}
    platform.ctl.set_adapter("tiny", "a", str(platform.models / "adapter-a"), ref="tiny-a@1")
    platform.ctl.set_traffic("tiny", {"a": 0.5})
    try:
        time.sleep(1.0)  # the gateway reads manifests with a 0.5 s cache
        explicit = ask("tiny:a")
        adapted = text(explicit)
        assert adapted != base
        assert explicit.headers["x-qingliang-adapter-ref"] == "tiny-a@1"
        arms: dict[str, str] = {}
        for i in range(30):
            r = ask("tiny", user=f"user-{i}")
            arm = arms[f"user-{i}"] = r.headers["x-qingliang-adapter"]
            assert r.json()["qingliang"] == {
                "deployment": "tiny",
                "adapter": arm or None,
                "adapter_ref": "tiny-a@1" if arm else None,
            }
            # Each arm answers exactly as that model does when named explicitly.
            assert text(r) == (adapted if arm == "a" else base), arm
            assert r.json()["model"] == ("tiny:a" if arm else "tiny")
        assert set(arms.values()) == {"", "a"}, arms
        for user in list(arms)[:6]:  # a user stays on one arm
            assert ask("tiny", user=user).headers["x-qingliang-adapter"] == arms[user]
        canary_user = next(u for u, arm in arms.items() if arm == "a")
        streamed = ask("tiny", user=canary_user, stream=True)
        assert streamed.headers["x-qingliang-adapter"] == "a"
        first = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))
        assert first["qingliang"] == {
            "deployment": "tiny",
            "adapter": "a",
            "adapter_ref": "tiny-a@1",
        }
    finally:
        platform.ctl.set_traffic("tiny", {})
    time.sleep(1.0)
    assert {ask("tiny", user=f"user-{i}").headers["x-qingliang-adapter"] for i in range(8)} == {""}
    after = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("tiny")}
    assert after == replicas, "replicas were restarted by a traffic change"


def test_adapter_hot_load_and_unload_while_requests_run(
    platform: Platform, client: openai.OpenAI
) -> None:
    before = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("tiny")}
    base = _greedy(client, "tiny")
    stop = threading.Event()
    results: list[str | Exception] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                results.append(_greedy(client, "tiny"))
            except Exception as exc:  # recorded and asserted on below
                results.append(exc)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        platform.ctl.set_adapter("tiny", "b", str(platform.models / "adapter-b"))
        deadline = time.monotonic() + 60
        while True:
            try:
                out_b = _greedy(client, "tiny:b")
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline, "adapter b never became servable"
                time.sleep(0.2)
        assert out_b != base
        assert "tiny:b" in {m.id for m in client.models.list().data}

        platform.ctl.set_adapter("tiny", "b", None)
        deadline = time.monotonic() + 60
        while True:
            try:
                _greedy(client, "tiny:b")
            except openai.NotFoundError as exc:
                assert "adapter" in str(exc)
                break
            assert time.monotonic() < deadline, "adapter b was never unloaded"
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert results and all(r == base for r in results)
    after = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("tiny")}
    assert after == before, "replicas were restarted by an adapter change"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "tiny"}, 400, "messages"),
        ({"model": "tiny", "messages": HI, "temperature": "hot"}, 400, "temperature"),
        ({"model": "tiny", "messages": HI, "max_tokenz": 3}, 400, "did you mean 'max_tokens'"),
        ({"model": "tiny", "messages": "hi"}, 400, "messages"),
        ({"model": "nope", "messages": HI}, 404, "does not exist"),
        ({"model": "tiny:zzz", "messages": HI}, 404, "adapter 'zzz'"),
        ({"model": "", "messages": HI}, 400, "model"),
        ({"model": "tiny", "messages": HI, "stream": "yes"}, 400, "stream"),
    ],
)
def test_malformed_requests_get_openai_errors(
    http: httpx.Client, body: dict, status: int, fragment: str
) -> None:
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert fragment in err["message"] or fragment == err["param"], err


def test_invalid_json_body(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_prompt_over_max_model_len_is_a_clear_400(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "seven " * 400}]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4)
    assert "maximum context length is 256 tokens" in str(exc.value)
    # Streaming gets the same 400, not a 200 with an error inside.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=long, max_tokens=4, stream=True)


def test_api_keys_are_required_and_revocable(platform: Platform) -> None:
    url = platform.base_url + "/models"
    assert httpx.get(url, timeout=30).status_code == 401
    assert (
        httpx.get(url, headers={"Authorization": "Bearer ql-bogus"}, timeout=30).status_code == 401
    )
    store = KeyStore(platform.settings.state_db)
    record, key = store.create("short-lived")
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    store.revoke(record.id)
    r = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_a_key_token_quota_is_charged_from_vllm_usage_then_refused(platform: Platform) -> None:
    """A key with a daily token limit: a streamed answer (the client asked no usage) is
    charged what vLLM reports, the client gets no usage event, and once the day's tokens
    are spent the next request is a 429 with Retry-After."""
    from datetime import UTC, datetime

    store = KeyStore(platform.settings.state_db)
    record, key = store.create("metered", scopes=["inference"], tokens_per_day=40)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "messages": HI, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.Client(base_url=platform.base_url, headers=headers, timeout=120) as http:
        r = http.post("/chat/completions", json=body)
        assert r.status_code == 200, r.text
        events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
        assert events and all(e.get("choices") for e in events)  # no usage-only event
        used = store.tokens_used(record.id, day)
        assert used > 8  # the prompt's tokens and up to 8 generated ones, from vLLM's usage
        while used < 40:  # spend the rest of the day's tokens
            assert http.post("/chat/completions", json=body).status_code == 200
            assert store.tokens_used(record.id, day) > used
            used = store.tokens_used(record.id, day)
        r = http.post("/chat/completions", json=body)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "token_quota_exceeded"
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86400
    assert abs(int(r.headers["Retry-After"]) - max(1, midnight - now.timestamp())) <= 2


def test_bad_apply_leaves_the_running_system_as_it_was(
    platform: Platform, client: openai.OpenAI
) -> None:
    stored = platform.ctl.get(live=False)
    replicas = platform.replicas("tiny")
    base = _greedy(client, "tiny")
    good = platform.manifest(
        "tiny-changed",
        tiny_manifest("tiny", platform.models / "tiny", extra_engine=", max_num_seqs: 4"),
    )
    bad_dir = platform.workdir / "bad"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "a.yaml").write_text(good.read_text())
    (bad_dir / "b.yaml").write_text(
        tiny_manifest("other", platform.models / "tiny").replace("max_model_len", "max_model_lenn")
    )
    with pytest.raises(ManifestError) as exc:
        platform.ctl.apply([bad_dir], wait=False, progress=False)
    assert "b.yaml: spec.engine.max_model_lenn: unknown key (did you mean 'max_model_len'?)" in str(
        exc.value
    )
    missing = platform.manifest(
        "missing", tiny_manifest("ghost", platform.workdir / "no-such-model")
    )
    with pytest.raises(ModelSourceError):
        platform.ctl.apply([missing], wait=False, progress=False)
    assert platform.ctl.get(live=False) == stored
    assert platform.replicas("tiny") == replicas
    assert "other" not in platform.serve_status() and "ghost" not in platform.serve_status()
    assert _greedy(client, "tiny") == base


def test_saturated_deployment_answers_429(platform: Platform) -> None:
    path = platform.manifest(
        "narrow",
        tiny_manifest(
            "narrow",
            platform.models / "tiny",
            extra_engine=", max_num_seqs: 1, max_concurrent_requests: 1, max_queued_requests: 1",
        ),
    )
    platform.ctl.apply([path], wait=True, timeout_s=300, progress=False)
    body = {
        "model": "narrow",
        "messages": HI,
        "max_tokens": 200,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {platform.key}"}

    def post(_: int) -> httpx.Response:
        return httpx.post(
            platform.base_url + "/chat/completions", json=body, headers=headers, timeout=300
        )

    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(post, range(8)))
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes, codes
        assert set(codes) <= {200, 429}, codes
        assert codes.count(200) >= 1
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["type"] == "rate_limit_error"
    finally:
        platform.ctl.delete(["narrow"])


def test_metrics_reach_the_prometheus_port(platform: Platform, client: openai.OpenAI) -> None:
    _greedy(client, "tiny:a")
    url = f"http://127.0.0.1:{platform.settings.metrics_port}/metrics"
    deadline = time.monotonic() + 60
    wanted = (
        "ray_qingliang_requests_total",
        "ray_qingliang_completion_tokens_total",
        "ray_qingliang_time_to_first_token_seconds",
        "ray_qingliang_ongoing_requests",
    )
    while True:
        text = httpx.get(url, timeout=30).text
        lines = [ln for ln in text.splitlines() if ln.startswith("ray_qingliang")]
        if all(any(ln.startswith(w) for ln in lines) for w in wanted) and any(
            'adapter="a"' in ln and 'deployment="tiny"' in ln for ln in lines
        ):
            break
        assert time.monotonic() < deadline, (
            f"metrics missing; have {sorted({ln.split('{')[0] for ln in lines})}"
        )
        time.sleep(2)


def test_killed_replica_is_replaced_and_requests_succeed(
    platform: Platform, client: openai.OpenAI
) -> None:
    base = _greedy(client, "tiny")
    (replica,) = platform.replicas("tiny")
    os.kill(int(replica["pid"]), signal.SIGKILL)
    # The next request is answered (the gateway retries once on a dead replica and
    # Serve queues it until the replacement is up), with the same greedy output.
    slow_client = client.with_options(timeout=300)
    assert _greedy(slow_client, "tiny") == base
    deadline = time.monotonic() + 300
    while platform.ctl.status("tiny")[0] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(1)
    (new,) = platform.replicas("tiny")
    assert new["replica_id"] != replica["replica_id"]
    assert _greedy(client, "tiny:a")  # adapters came back with the new replica


def test_readyz_reports_each_deployment(http: httpx.Client) -> None:
    r = http.get("/readyz")
    assert r.status_code == 200
    assert json.loads(r.text)["deployments"]["tiny"] == "ready"


def test_adapter_loads_on_every_replica(platform: Platform, client: openai.OpenAI) -> None:
    path = platform.manifest(
        "pair",
        tiny_manifest("pair", platform.models / "tiny").replace(
            "placement: {cpus: 0.5}",
            "placement: {cpus: 0.25}\n  autoscaling: {min_replicas: 2, max_replicas: 2}",
        ),
    )
    platform.ctl.apply([path], wait=True, timeout_s=600, progress=False)
    try:
        replicas = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("pair")}
        assert len(replicas) == 2
        platform.ctl.set_adapter("pair", "b", str(platform.models / "adapter-b"))
        deadline = time.monotonic() + 60
        while True:
            try:
                expected = _greedy(client, "pair:b")
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline, "adapter b never became servable"
                time.sleep(0.2)
        # Many concurrent requests spread over both replicas; every one is served with
        # the adapter, so each replica has it loaded.
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: _greedy(client, "pair:b"), range(24)))
        assert outs == [expected] * 24
        url = f"http://127.0.0.1:{platform.settings.metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            workers = {
                ln.split('WorkerId="')[1].split('"')[0]
                for ln in httpx.get(url, timeout=30).text.splitlines()
                if ln.startswith("ray_qingliang_requests_total")
                and 'deployment="pair"' in ln
                and 'adapter="b"' in ln
                and 'status="200"' in ln
            }
            if len(workers) == 2:
                break
            assert time.monotonic() < deadline, f"adapter requests seen on {workers}"
            time.sleep(2)
        after = {r["replica_id"]: r["start_time_s"] for r in platform.replicas("pair")}
        assert after == replicas, "replicas were restarted"
    finally:
        platform.ctl.delete(["pair"])
