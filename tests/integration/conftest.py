"""A real local platform for the integration tests: Ray head on 127.0.0.1 (own temp
dir and ports, never the user's), the gateway with API keys on, and the tiny random
Llama served by vLLM's CPU build. Started once per session, stopped at the end
(only the processes it started)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import yaml
from _platform import PORTS, Platform, tiny_manifest

from qingliang.platform.control import cluster
from qingliang.platform.control.apply import Controller
from qingliang.platform.settings import Settings
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.tiny_model import build_tiny_adapter, build_tiny_llama


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    base = build_tiny_llama(root / "tiny")
    build_tiny_adapter(base, root / "adapter-a", seed=1)
    build_tiny_adapter(base, root / "adapter-b", seed=2)
    return root


@pytest.fixture(scope="session")
def packaged_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-model cache for the session: the packaged Qwen is converted once."""
    return tmp_path_factory.mktemp("packaged-models")


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path, packaged_cache: Path):
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(packaged_cache, target_is_directory=True)
    settings = Settings(home=home, **PORTS)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    cluster.start_head(settings, num_cpus=4)
    try:
        ctl = Controller(settings)
        ctl.ensure_gateway(auth_enabled=True)
        _record, key = KeyStore(settings.state_db).create("integration", scopes=["admin"])
        work = tmp_path_factory.mktemp("manifests")
        p = Platform(
            settings, ctl, key, f"http://127.0.0.1:{PORTS['http_port']}/v1", tiny_models, work
        )
        path = p.manifest(
            "tiny",
            tiny_manifest(
                "tiny",
                tiny_models / "tiny",
                adapters=f", adapters: {{a: {tiny_models / 'adapter-a'}}}",
            ),
        )
        ctl.apply([path], wait=True, timeout_s=600, progress=False)
        ctl.wait("qingliang-gateway", timeout_s=120)
        _wait_http(p)
        yield p
    finally:
        cluster.stop_head(settings)


DEFAULTS = Path(__file__).resolve().parents[2] / "deploy" / "defaults" / "qwen-coder.yaml"


@pytest.fixture(scope="session")
def qwen(platform: Platform) -> str:
    """The packaged default deployment (deploy/defaults/qwen-coder.yaml), under its own name, once
    per session: every test file that needs the real small model shares it."""
    doc = yaml.safe_load(DEFAULTS.read_text())
    # Share the test cluster's cores with the tiny deployments.
    doc["spec"]["placement"]["cpus"] = 1
    name = doc["metadata"]["name"]  # qwen-coder: the bundles under deploy/ name it so
    path = platform.manifest(name, yaml.safe_dump(doc))
    platform.ctl.apply([path], wait=True, timeout_s=900, progress=False)
    return name


def _wait_http(p: Platform, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(p.base_url.removesuffix("/v1") + "/readyz", timeout=5)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("gateway did not become ready")


@pytest.fixture
def client(platform: Platform):
    import openai

    return openai.OpenAI(
        base_url=platform.base_url, api_key=platform.key, max_retries=0, timeout=120
    )


@pytest.fixture
def http(platform: Platform):
    with httpx.Client(
        base_url=platform.base_url.removesuffix("/v1"),
        headers={"Authorization": f"Bearer {platform.key}"},
        timeout=120,
    ) as c:
        yield c
