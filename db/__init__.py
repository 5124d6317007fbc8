"""Database layer: SQLAlchemy 2.0 typed models, engine/session factory, Alembic migrations and
query functions that take a Session (the caller owns the transaction). Imports nothing of ours."""
