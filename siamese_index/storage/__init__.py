"""Persistent storage: the database (source of truth), the FAISS cache built from it, the model-version
registry, durable writes and stored photo copies."""
