"""Corpus loaders (one per source format, in `registry.LOADERS`) and ingestion into the database."""
