"""The registry's JSON schema, generated from the pydantic models of simudy.config, so that an
editor validates params/experiments.yaml while it is written (the CLI validates it on load).
`simudy schema` rewrites params/experiments.schema.json; a test fails when it is stale."""

from __future__ import annotations

import json
from pathlib import Path

from simudy.config import Registry
from simudy.io import atomic_path


def registry_schema() -> dict:
    schema = Registry.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "simudy experiment registry",
            **schema}


def write(out: str | Path) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(registry_schema(), indent=1, sort_keys=True) + "\n")
