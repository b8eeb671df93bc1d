"""The lock that makes changes to the deployments take turns (an ``flock`` file)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def deployments_lock(state_db: Path) -> Iterator[None]:
    """Serialise read-modify-write of the deployments (push to Serve, then store).

    ``set_adapter``, ``set_traffic``, ``apply`` and ``delete`` each read the stored
    deployments, change one, push the whole Serve config and write the store. Two of
    them at once (a pipeline's canary step and an operator's ``adapters traffic``)
    would each start from the same rows and the later write would undo the earlier
    change, in the store or in Serve. An ``flock`` beside the state database makes them
    take turns, across threads and processes of this host; the kernel releases it if
    the holder dies.
    """
    path = Path(state_db).with_name(".deployments.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
