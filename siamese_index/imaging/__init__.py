"""Reading images safely, finding and cropping faces, and what a caller may hand over as an image."""
