"""SiameseIndex, the facade over one home, and its collaborators."""
