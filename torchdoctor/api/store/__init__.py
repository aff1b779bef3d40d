"""The service's persistence: SQLAlchemy tables, Alembic migrations, a typed store."""
