"""Option vocabularies of knowledge discovery (``typing.Literal`` aliases; validated with ``get_args``)."""

from typing import Literal

Classifier = Literal["svm", "random_forest", "logistic_regression", "decision_tree"]
CalibrationMethod = Literal["sigmoid", "isotonic"]
"""Probability calibration (Platt sigmoid, or isotonic regression) via ``CalibratedClassifierCV``."""
SimilarityMetric = Literal["euclidean", "manhattan", "cosine"]
"""Distance between standardised case feature vectors for similar-case reasoning."""
NeighbourWeights = Literal["uniform", "distance"]
OutcomeKind = Literal["auto", "binary", "categorical", "continuous"]
DiscoveryStatus = Literal["ok", "partial", "skipped"]
