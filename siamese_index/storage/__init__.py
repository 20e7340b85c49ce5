"""Persistent storage: the SQLite database (source of truth) and the FAISS cache built from it."""

from siamese_index.storage.db import SCHEMA_VERSION, Database, WriterLock, WriteTxn
from siamese_index.storage.vectors import VectorIndex, id_set_sha256, squared_to_l2

__all__ = ["Database", "WriterLock", "WriteTxn", "SCHEMA_VERSION", "VectorIndex", "id_set_sha256", "squared_to_l2"]
