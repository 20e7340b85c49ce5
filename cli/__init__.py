"""The click front end of siamese-index: parse, call the library, print."""
