"""Data lifecycle: governance of training data (deduplication, quality, PII)."""
