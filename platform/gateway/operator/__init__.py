"""What the gateway's operator routes read and run (the web console's deployments,
metrics and demos pages): :mod:`.operations` (deployments, lineage, metric series),
:mod:`.manifest_check` (validate and diff a manifest's text), :mod:`.demo_jobs`
(``qingliang demo up|down`` as jobs). The routes are :mod:`..routes.ops` and
:mod:`..routes.demos`."""
