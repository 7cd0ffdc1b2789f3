"""SimuDy: reconstruct training data from a network's parameters by simulating its training."""

__version__ = "0.1.0"
