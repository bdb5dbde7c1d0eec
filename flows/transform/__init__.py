"""Transform: SQLMesh plans and runs the medallion inside PostgreSQL; audits are gates."""
