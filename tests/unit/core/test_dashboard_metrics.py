"""The Grafana dashboard (deploy/grafana/qingliang.json) reads only metrics the code
defines: every ``ray_*`` name in a panel's query is one of platform/metrics.py's catalogue,
of serving/metrics.py's, or vLLM's own (exported through Ray), with the suffix Prometheus
gives its kind. A renamed metric fails here, without Ray or Prometheus
(tests/integration/test_prometheus.py checks that each query returns data)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from qingliang.platform import metrics

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy" / "grafana" / "qingliang.json"
NAME = re.compile(r"\bray_[A-Za-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in doc["panels"]
        for target in panel.get("targets", [])
    ]


def _exported(name: str, kind: str) -> set[str]:
    base = "ray_" + name.replace(":", "_")
    if kind == "counter":
        return {base if base.endswith("_total") else base + "_total"}
    return {base + suffix for suffix in SUFFIXES[kind]}


def _serving_metrics() -> dict[str, str]:
    """Name → kind of each Counter / Gauge / Histogram serving/metrics.py creates."""
    tree = ast.parse((REPO / "serving" / "metrics.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("Counter", "Gauge", "Histogram")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found[node.args[0].value] = node.func.id.lower()
    return found


def _vllm_metrics() -> dict[str, str]:
    """vLLM's engine metrics (``vllm:…``) by kind, from its stat logger's source."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    kinds = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}
    found = {}
    for match in re.finditer(r"self\.(_\w+_cls)\(\s*name=\"(vllm:\w+)\"", source):
        if match.group(1) in kinds:
            found[match.group(2)] = kinds[match.group(1)]
    return found


def defined() -> set[str]:
    names: set[str] = set()
    for spec in metrics.CATALOG:
        names |= _exported(spec.name, spec.kind)
    for name, kind in {**_serving_metrics(), **_vllm_metrics()}.items():
        names |= _exported(name, kind)
    return names


def test_every_metric_a_panel_reads_is_defined() -> None:
    known = defined()
    queries = panel_queries()
    assert len(queries) >= 25
    missing = [
        f"{title!r}: {name} in {expr}"
        for title, expr in queries
        for name in NAME.findall(expr)
        if name not in known
    ]
    assert not missing, "\n".join(missing)


def test_the_dashboard_covers_every_layer() -> None:
    used = {name for _title, expr in panel_queries() for name in NAME.findall(expr)}
    prefixes = [
        "ray_qingliang_gateway_seconds",
        "ray_vllm_",
        "ray_qingliang_knowledge_search_seconds",
        "ray_qingliang_knowledge_chunks_ingested",
        "ray_qingliang_agent_runs_",
        "ray_qingliang_agent_approvals_waiting",
        "ray_qingliang_router_decisions",
        "ray_qingliang_router_reward",
        "ray_qingliang_pipeline_steps",
        "ray_qingliang_canary_share",
    ]
    assert [p for p in prefixes if not any(n.startswith(p) for n in used)] == []


def test_a_renamed_metric_is_caught() -> None:
    """The check itself can fail: a name with a typo is not among the defined ones."""
    known = defined()
    assert "ray_qingliang_knowledge_search_seconds_bucket" in known
    assert "ray_qingliang_knowledge_search_second_bucket" not in known
    assert "ray_vllm_num_requests_running" in known
    assert "ray_qingliang_requests_total" in known


def test_every_catalogued_metric_is_documented() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert [s.name for s in metrics.CATALOG if f"`{s.name}`" not in text] == []


def test_catalogue_names_and_labels_are_valid_and_unique() -> None:
    names = [s.name for s in metrics.CATALOG]
    assert len(names) == len(set(names))
    for spec in metrics.CATALOG:
        assert re.fullmatch(r"qingliang_[a-z_]+", spec.name), spec.name
        assert spec.kind in SUFFIXES
        assert (spec.kind == "histogram") == bool(spec.boundaries), spec.name
        assert list(spec.boundaries) == sorted(spec.boundaries)
        assert spec.kind != "counter" or spec.name.endswith("_total"), spec.name
