"""SQLMesh's external models, generated from their one definition each: every raw table from
its dataset spec (text data columns plus the provenance columns), every ``meta`` table from
:mod:`flows.meta`. Nothing is written to disk, so nothing can go stale.

:class:`SpecLoader` is SQLMesh's own loader plus these models; the project config
(:func:`flows.transform.config.sqlmesh_config`) names it, for the pipeline and the ``sqlmesh``
CLI alike.
"""

from __future__ import annotations

from typing import Any

from sqlmesh.core.loader import SqlMeshLoader
from sqlmesh.core.model import Model, create_external_model
from sqlmesh.utils import UniqueKeyDict
from sqlmesh.utils.errors import ConfigError

from flows import specs
from flows.ingest.landing import PROVENANCE_COLUMNS, RAW
from flows.meta import META, META_TABLES
from flows.specs import DatasetSpec, bundled_specs


def external_model_definitions(datasets: list[DatasetSpec]) -> list[dict[str, Any]]:
    """One ``{"name", "description", "columns"}`` per raw table of ``datasets`` and per meta
    table."""
    definitions = []
    for spec in datasets:
        for table, table_spec in spec.tables.items():
            description = table_spec.description or f"Raw {table} of dataset {spec.name}."
            definitions.append(
                {
                    "name": f"{RAW}.{table}",
                    "description": f"{description} Text as received, with provenance and "
                    "governance columns; one partition per batch.",
                    "columns": {
                        **{column: "text" for column in table_spec.columns},
                        **PROVENANCE_COLUMNS,
                    },
                }
            )
    for meta_table in META_TABLES:
        definitions.append(
            {
                "name": f"{META}.{meta_table.name}",
                "description": meta_table.description,
                "columns": meta_table.column_types,
            }
        )
    return definitions


class SpecLoader(SqlMeshLoader):
    """SQLMesh's loader, plus the external models of :func:`external_model_definitions`."""

    def _load_external_models(self, audits, cache, gateway=None):  # type: ignore[no-untyped-def]
        models: UniqueKeyDict[str, Model] = super()._load_external_models(audits, cache, gateway)
        for path in sorted(specs.BUNDLED.glob("*.yaml")):
            self._track_file(path)
        for definition in external_model_definitions(bundled_specs()):
            model = create_external_model(
                defaults=self.config.model_defaults.dict(),
                path=specs.BUNDLED,
                project=self.config.project,
                audit_definitions=audits,
                dialect=self.config.model_defaults.dialect,
                default_catalog=self.context.default_catalog,
                **definition,
            )
            if model.fqn in models:
                raise ConfigError(f"external model {model.name} is declared twice")
            models[model.fqn] = model
        return models
