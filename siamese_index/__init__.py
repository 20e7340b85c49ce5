"""siamese-index: Siamese-tower embeddings in a FAISS + SQLite index.

Importing this package imports neither TensorFlow nor a web framework.
"""
__version__ = "0.1.0"

from .errors import (  # noqa: E402
    Busy,
    IndexStale,
    InvalidData,
    InvalidImage,
    ModelError,
    ModelMismatch,
    NotFound,
    SiameseIndexError,
)
from .types import EnrollResult, Identification, Match, Person, Verification  # noqa: E402

__all__ = [
    "__version__",
    "SiameseIndexError", "InvalidImage", "InvalidData", "ModelError", "ModelMismatch", "NotFound",
    "IndexStale", "Busy", "Match", "Identification", "Verification", "EnrollResult", "Person",
]
