"""``ray start`` for a worker node that stays on 127.0.0.1, run as a script with the
arguments of ``ray start`` (tests/integration/_multinode.py).

The platform's ``ray_env()`` sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every Ray
process then keeps 127.0.0.1 as its node's address and binds its servers to loopback
(Ray binds GCS, metrics and agents to all interfaces for any other address). With it,
``ray start --address`` refuses to start a worker node; without it, it rewrites
127.0.0.1 to the machine's network address. This runs Ray's own ``ray start`` with the
refusal lifted and the address kept, in this process only: the processes it starts get
``ray_env()`` unchanged. On separate machines (or with other loopback addresses, as
docs/cluster.md shows) plain ``ray start`` is what runs.
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts.scripts import main

LOOPBACK = "127.0.0.1"

if __name__ == "__main__":
    ray_constants.ENABLE_RAY_CLUSTER = True
    services.get_node_ip_address = lambda address=None: LOOPBACK
    sys.argv[0] = "ray"
    sys.exit(main())
