"""Classifier checkpoints: the format lives with the one classifier type in training/classifier.py.

Kept as a module so `fashionrec.training.checkpoint.load_classifier` (used by the CLI) keeps working;
`LoadedClassifier` is the same class as a trained one (`Classifier`).
"""

from fashionrec.training.classifier import FORMAT, VERSION, Classifier, load_classifier

LoadedClassifier = Classifier  # compatible alias: there is one classifier type now

__all__ = ["FORMAT", "VERSION", "Classifier", "LoadedClassifier", "load_classifier"]
