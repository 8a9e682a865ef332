"""odenet: reproduce, measure and extend the MNIST experiments of Neural ODEs."""

__version__ = "0.1.0"
