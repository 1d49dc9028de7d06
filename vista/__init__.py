"""vista: a training pipeline for VISTA-Net (variational structured attention networks)."""

__version__ = "0.1.0"
