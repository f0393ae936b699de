"""impress-lightning: continual learning with ImpressLearn supermask impressions on PyTorch Lightning."""

__version__ = "0.1.0"
