"""Package discovery for the ``qingliang`` namespace.

All metadata lives in pyproject.toml. This file only maps the five top-level
folders onto ``qingliang.<folder>`` and lists every package below them, derived
from the folders so a wheel never silently drops a subpackage (see
ARCHITECTURE.md: an explicit list in pyproject breaks wheels, hatchling's
remapping breaks editable installs).
"""

from pathlib import Path

from setuptools import find_packages, setup

TOPS = ("platform", "serving", "agents", "knowledge")
HERE = Path(__file__).resolve().parent

packages = []
package_dir = {}
for top in TOPS:
    if not any((HERE / top).glob("**/*.py")):
        continue  # a folder with no code yet (git does not keep empty folders)
    packages.append(f"qingliang.{top}")
    package_dir[f"qingliang.{top}"] = top
    for sub in find_packages(top):
        packages.append(f"qingliang.{top}.{sub}")

setup(packages=packages, package_dir=package_dir)
