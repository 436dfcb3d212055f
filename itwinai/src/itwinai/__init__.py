"""itwinai: train and serve PyTorch Lightning models with MLflow tracking."""

__version__ = "0.2.0"
