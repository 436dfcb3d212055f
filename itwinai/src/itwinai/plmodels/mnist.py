"""LitMNIST: a small MLP classifier over the splits written by the MNIST preprocessing step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def load_split(data_dir: str | Path, split: str) -> TensorDataset:
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {split} split here (run the preprocessing step first)")
    with np.load(path) as d:
        x = torch.from_numpy(d["x"].astype(np.float32))
        y = torch.from_numpy(d["y"].astype(np.int64))
    return TensorDataset(x, y)


class LitMNIST(L.LightningModule):
    def __init__(self, data_dir: str = "./data/mnist/preproc-images", hidden_size: int = 64,
                 learning_rate: float = 2e-4, batch_size: int = 32, num_workers: int = 0, dropout: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model(x), dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.nll_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.nll_loss(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=True)
        self.log(f"{stage}_acc", acc, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        """Per sample: the predicted class and its probability (itwinai predict writes them as CSV columns)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        probability, predicted = self(x).exp().max(dim=1)
        return {"predicted": predicted, "probability": probability}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(load_split(self.data_dir, split), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
