"""Tools agents call (knowledge search, OCR, forms, read-only SQL) and nodes run (submit).

Their manifest models are in :mod:`.specs`; :func:`qingliang.agents.toolbox.build_tools`
turns a manifest's ``spec.tools`` into :class:`~.base.Tool` objects; ``call_agent`` tools
are built by the runtime, which owns the nested graphs. Nothing here imports the
``agents`` package's own modules.
"""
