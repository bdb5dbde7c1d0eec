"""SQLMesh project config for the ``sqlmesh`` CLI: ``cd transforms && sqlmesh info`` (run it
from here, so its ``logs/`` land in the ignored ``transforms/logs/``).

The config is built from shardyard's settings (``SHARDYARD_*`` variables), exactly as
``flows.transform.runner`` builds it for the pipeline: a PostgreSQL gateway on shardyard's database
(embedded when ``SHARDYARD_DATABASE_URL`` is unset: the one under the same home as the
``shardyard`` command's, ``<checkout>/.shardyard`` unless ``SHARDYARD_HOME`` says otherwise,
never ``transforms/.shardyard``), SQLMesh state in the ``sqlmesh_state`` schema of the same
database. Pass ``SHARDYARD_ENV`` as the environment name to the CLI
(``sqlmesh plan dev``); the pipeline itself plans and runs through ``flows.transform.runner``.
"""

from flows.settings import load_settings
from flows.transform.config import sqlmesh_config

config = sqlmesh_config(load_settings())
