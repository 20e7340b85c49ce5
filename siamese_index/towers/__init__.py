"""Tower architectures, losses, model directories and the embedder that runs a tower."""
