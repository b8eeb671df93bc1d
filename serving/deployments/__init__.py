"""Serving's Ray Serve deployments and the handles the gateway and agents reach them by.

``model`` hosts one ``ModelDeployment`` (an engine behind ``ModelServer``), ``embedder``
the packaged embedding model, and ``handles`` is the caller's side: requests over Serve
handles, with Ray's errors translated to the platform's ``ApiError`` in one place.
"""
