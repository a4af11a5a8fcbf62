"""The HTTP API: per-user risk and history, flags and their review, exchanges, the override audit, health, metrics."""
