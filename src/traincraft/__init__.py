"""traincraft: train any PyTorch model with the right strategies."""

__version__ = "0.1.0"
