"""Public Prefect flows of batchflows, one per module."""
