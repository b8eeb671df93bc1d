"""``spec.placement.resources``: custom Ray resources a replica needs (a node started with
``ray start --resources '{"accel": 1}'``), checked in the manifest and carried into the
replica's Ray actor options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qingliang.serving.manifest import Placement
from qingliang.serving.plan import _actor_options


def test_custom_resources_reach_the_replicas_actor_options() -> None:
    p = Placement(cpus=0.5, resources={"accel": 1})
    assert _actor_options(p) == {"num_cpus": 0.5, "resources": {"accel": 1.0}}


def test_custom_resources_go_with_the_npu_resource() -> None:
    p = Placement(accelerator="npu", npus=2, tensor_parallel_size=2, resources={"pool-a": 0.5})
    assert _actor_options(p)["resources"] == {"pool-a": 0.5, "NPU": 2}


def test_no_custom_resources_no_resources_option() -> None:
    assert "resources" not in _actor_options(Placement())


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ({"CPU": 1}, "'CPU' is not a custom resource: set placement.cpus"),
        ({"gpu": 1}, "'gpu' is not a custom resource: set placement.gpus"),
        ({"memory": 1}, "set placement.memory_gib"),
        ({"my accel": 1}, "'my accel' is not a Ray resource name"),
        ({"accel": 0}, "resources.accel must be greater than 0"),
    ],
)
def test_bad_custom_resources_are_named(resources: dict, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        Placement(resources=resources)
    assert says in str(err.value)
