"""The manifest kinds ``apply`` knows, registered with the loader in their listing order.

The loader (core) imports no kind; this module, above every area whose kind ``apply``
handles, registers them. Import it before loading manifests::

    import qingliang.platform.control.kinds  # noqa: F401

``FineTuneJob`` and ``Pipeline`` live above control; they are registered by
:mod:`qingliang.platform.lifecycle.pipelines.kinds`, which imports this module first so
that the order stays ``ModelDeployment, KnowledgeBase, AgentGraph, Dataset, FineTuneJob,
Pipeline``.
"""

from __future__ import annotations

from qingliang.agents.manifest import AgentGraph
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.platform.lifecycle.data.manifest import Dataset
from qingliang.platform.manifests.loader import known_kinds, register_kind
from qingliang.serving.manifest import ModelDeployment

for _model in (ModelDeployment, KnowledgeBase, AgentGraph, Dataset):
    register_kind(_model)

__all__ = ["known_kinds"]
