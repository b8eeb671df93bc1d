"""platform/control/prometheus.py without starting Prometheus: the scrape configuration,
the Ray dashboard's variables, a clear error without a binary, and a recorded pid that is
no longer our Prometheus is never signalled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qingliang.platform.control import prometheus
from qingliang.platform.errors import ClusterError
from qingliang.platform.settings import Settings


def test_the_config_scrapes_rays_node_list_or_the_given_ports(tmp_path: Path) -> None:
    found = prometheus.discovery_file(tmp_path)
    assert found == tmp_path / "session_latest" / "prom_metrics_service_discovery.json"
    config = json.loads(prometheus.scrape_config(discovery=found, interval_s=2))
    assert config["global"]["scrape_interval"] == "2s"
    assert config["scrape_configs"] == [
        {"job_name": "ray", "file_sd_configs": [{"files": [str(found)]}]}
    ]
    static = json.loads(prometheus.scrape_config(targets=["127.0.0.1:8080"]))
    assert static["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    with pytest.raises(ValueError, match="targets or a discovery file"):
        prometheus.scrape_config()


def test_the_ray_dashboard_gets_prometheus_and_grafana_from_our_variables() -> None:
    env = prometheus.dashboard_env(
        {
            "QINGLIANG_PROMETHEUS_URL": "http://127.0.0.1:9090/",
            "QINGLIANG_GRAFANA_URL": "http://g:3000",
        }
    )
    assert env == {
        "RAY_PROMETHEUS_HOST": "http://127.0.0.1:9090",
        "RAY_GRAFANA_HOST": "http://g:3000",
        "RAY_GRAFANA_IFRAME_HOST": "http://g:3000",
    }


def test_without_a_binary_up_prometheus_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(prometheus.BINARY_ENV, str(tmp_path / "no-such-prometheus"))
    with pytest.raises(ClusterError, match="apt-get install -y prometheus"):
        prometheus.prepare(Settings(home=tmp_path))
    with pytest.raises(ClusterError, match="apt-get install -y prometheus"):
        prometheus.start("{}", port=28999, data_dir=tmp_path / "data")


def test_the_url_follows_the_port_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prometheus.PORT_ENV, "28950")
    assert prometheus.platform_url(Settings(home=tmp_path)) == "http://127.0.0.1:28950"


def test_a_recorded_pid_that_is_not_our_prometheus_is_left_alone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    # This very process, recorded as if it were the platform's Prometheus.
    prometheus.PrometheusRun(os.getpid(), "http://127.0.0.1:9", str(tmp_path)).save(
        tmp_path / prometheus.RUN_FILE
    )
    assert prometheus.shutdown(settings) is False  # not signalled: we are still here
    assert not (tmp_path / prometheus.RUN_FILE).exists()
    assert prometheus.shutdown(settings) is False  # nothing recorded: nothing to do
