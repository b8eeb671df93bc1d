"""Every manifest kind: the ones ``apply`` knows, then ``FineTuneJob`` and ``Pipeline``.

Entry points that load any manifest (the CLI, the gateway's pipeline routes, pipeline runs)
import this module first::

    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
"""

from __future__ import annotations

import qingliang.platform.control.kinds  # noqa: F401  (registers the first four, in order)
from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
from qingliang.platform.lifecycle.pipelines.manifest import Pipeline
from qingliang.platform.manifests.loader import known_kinds, register_kind

register_kind(FineTuneJob)
register_kind(Pipeline)

__all__ = ["known_kinds"]
