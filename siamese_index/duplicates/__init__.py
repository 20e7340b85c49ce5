"""Batch deduplication of image collections: scan, describe, search, group, report, quarantine."""
