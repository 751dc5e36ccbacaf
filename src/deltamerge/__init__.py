"""deltamerge: composable fine-tuning with DELTA (distilled linearized task arithmetic) and its baselines."""

__version__ = "0.1.0"
