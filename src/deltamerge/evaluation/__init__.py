"""Accuracy of edited models, the paper's protocols (addition, negation, α search) and diagnostics."""
