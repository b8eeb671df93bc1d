"""serving/traffic: the typed view of the applied ModelDeployments (ServingView, ModelEntry).

Everything that reads ``spec.lora`` of an applied deployment (the gateway, agents,
``apply``, pipelines' canary steps, ``qingliang lineage``) reads it through this view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from qingliang.serving.traffic import ModelEntry, ServingView, entry_of, entry_of_body


@dataclass
class Row:
    name: str
    body: dict[str, Any] = field(default_factory=dict)
    applied_at: float = 0.0


def body(lora: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "ModelDeployment",
        "metadata": {"name": "qwen", "labels": {"team": "a"}, "description": "coder"},
        "spec": {**spec, **({"lora": lora} if lora is not None else {})},
    }


def test_an_entry_has_every_field_of_the_applied_manifest() -> None:
    row = Row(
        "qwen",
        body(
            {
                "adapters": {"sql": "/a/sql-3", "faq": "/a/faq-4"},
                "traffic": {"faq": 0.25},
                "refs": {"faq": "faq-bot@4"},
            },
            model={"source": "hf://Qwen/Qwen2.5-0.5B"},
            engine={"kind": "vllm"},
        ),
        applied_at=17.9,
    )
    entry = entry_of(row)
    assert entry == ModelEntry(
        "qwen",
        ("faq", "sql"),
        created=17,
        labels={"team": "a"},
        description="coder",
        traffic={"faq": 0.25},
        refs={"faq": "faq-bot@4"},
        adapter_paths={"sql": "/a/sql-3", "faq": "/a/faq-4"},
        lora_enabled=True,
        source="hf://Qwen/Qwen2.5-0.5B",
        engine="vllm",
    )
    assert list(entry.adapter_paths) == ["sql", "faq"]  # the manifest's order
    assert entry.adapter_refs() == {"faq": "faq-bot@4", "sql": None}


@pytest.mark.parametrize(
    ("lora", "enabled"),
    [
        (None, False),
        ({}, False),
        ({"adapters": {"a": "/a"}}, True),
        ({"adapters": {"a": "/a"}, "enabled": False}, False),
        ({"adapters": {}, "enabled": True}, True),
        ({"enabled": None}, False),
    ],
)
def test_lora_is_on_as_loraoptions_active_says(lora: dict | None, enabled: bool) -> None:
    entry = entry_of_body("qwen", body(lora))
    assert entry.lora_enabled is enabled
    assert (entry.adapters, dict(entry.adapter_paths)) == (
        tuple(sorted((lora or {}).get("adapters") or {})),
        (lora or {}).get("adapters") or {},
    )


def test_a_body_without_spec_or_metadata_reads_as_empty() -> None:
    assert entry_of_body("x", {}) == ModelEntry("x")
    assert entry_of_body("x", {"spec": None, "metadata": None}) == ModelEntry("x")


def test_the_view_keeps_the_store_order_and_maps_adapters_to_refs() -> None:
    view = ServingView.of(
        [
            Row("support", body({"adapters": {"faq": "/f"}, "refs": {"faq": "faq-bot@1"}})),
            Row("plain", body()),
            # A ref without a loaded adapter still counts (the lineage command lists it).
            Row("gov", body({"refs": {"desk": "gov-desk@2"}})),
        ]
    )
    assert view.names() == ("support", "plain", "gov")
    assert view.get("plain") == ModelEntry("plain", labels={"team": "a"}, description="coder")
    assert view.get("nope") is None
    assert view.adapter_refs() == {
        "support": {"faq": "faq-bot@1"},
        "plain": {},
        "gov": {"desk": "gov-desk@2"},
    }
    assert list(view.adapter_refs()) == ["support", "plain", "gov"]
