"""Model versions of a home: activate, rollback, re-embed, retrain, feedback, thresholds."""
