"""Pre-trained models exposed as ``features(inputs) -> [B, D]`` plus a trainable-parameter policy."""

from deltamerge.backbones.base import Backbone, Head

__all__ = ["Backbone", "Head"]
