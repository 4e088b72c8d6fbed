"""What a pre-training run learned, as figures and one HTML page (``tools/analyze.py``).

``features.py`` (extraction through the model's inference path), ``prototypes.py`` (usage,
members, cross-scale pairs, t-SNE), ``retrieval.py`` (cosine neighbours, kNN multi-label probe),
``curves.py`` (``metrics.json``), ``figures.py`` (matplotlib), ``report.py`` (HTML),
``runner.py`` (the report of one checkpoint).
"""
from .features import ImageFeatures, ScaleEmbeddings, extract_features
from .retrieval import cosine_neighbors, knn_multilabel_map
from .runner import AnalysisOptions, load_pretrained, write_report

__all__ = [
    "AnalysisOptions",
    "ImageFeatures",
    "ScaleEmbeddings",
    "cosine_neighbors",
    "extract_features",
    "knn_multilabel_map",
    "load_pretrained",
    "write_report",
]
