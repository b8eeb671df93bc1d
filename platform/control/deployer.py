"""The narrow part of Ray Serve the controller uses, and its REST implementation."""

from __future__ import annotations

from typing import Protocol

from qingliang.platform.errors import ClusterError


class Deployer(Protocol):
    """The narrow part of Ray Serve the controller uses: a declarative config."""

    def apply_config(self, config: dict) -> None: ...

    def statuses(self) -> dict[str, tuple[str, str]]: ...


class ServeRestDeployer:
    """Ray Serve's declarative REST API on the dashboard (what `serve deploy` and
    KubeRay's RayService use). A config that changes only a deployment's
    ``user_config`` is a lightweight update: replicas are reconfigured, not restarted.
    """

    def __init__(self, dashboard_url: str, timeout_s: float = 30) -> None:
        self.url = dashboard_url.rstrip("/") + "/api/serve/applications/"
        self.timeout_s = timeout_s

    def apply_config(self, config: dict) -> None:
        import httpx

        try:
            r = httpx.put(self.url, json=config, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ClusterError(f"Ray dashboard at {self.url} is unreachable: {exc}") from exc
        if r.status_code >= 400:
            raise ClusterError(f"Ray Serve refused the config ({r.status_code}): {r.text[:2000]}")

    def statuses(self) -> dict[str, tuple[str, str]]:
        import httpx

        try:
            r = httpx.get(self.url, timeout=self.timeout_s)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ClusterError(f"Ray dashboard at {self.url} is unreachable: {exc}") from exc
        out = {}
        for name, app in (r.json().get("applications") or {}).items():
            message = app.get("message") or ""
            for dep in (app.get("deployments") or {}).values():
                if dep.get("message") and dep.get("status") != "HEALTHY":
                    message = dep["message"]
            out[name] = (str(app.get("status")), message)
        return out
