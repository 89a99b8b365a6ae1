"""Vector indexes behind one interface (`VectorIndex`); FAISS exact inner product by default."""

from service.index.base import VectorIndex
from service.index.flat import FlatIPIndex
from service.index.subjects import SCORING_RULES, SubjectIndex

__all__ = ["SCORING_RULES", "FlatIPIndex", "SubjectIndex", "VectorIndex"]
