"""A router actor left running from an older version: the call names the fix."""

from __future__ import annotations

import pytest

from qingliang.agents.routing.actor import RouterClient
from qingliang.platform.errors import ClusterError


class OldActorHandle:
    """An actor handle of a version before `report` existed (it has only `stats`)."""

    class _Method:
        async def remote(self, *args: object, **kw: object) -> dict:
            return {"router": args[0], "decisions": 0}

    stats = _Method()


async def test_a_method_the_running_actor_lacks_says_to_restart() -> None:
    client = RouterClient(OldActorHandle())
    assert (await client._call("stats", "desk/triage"))["router"] == "desk/triage"
    with pytest.raises(ClusterError, match=r"no 'report'.*older Qingliang; restart"):
        await client.report("desk/triage")
