"""Model operations: what may become champion, rollback, and what leaves the registry."""
