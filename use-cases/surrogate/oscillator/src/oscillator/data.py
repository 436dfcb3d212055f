"""The splits the simulation step writes (train/val/test.npz: x = parameters, y = responses)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


class OscillatorData(L.LightningDataModule):
    def __init__(self, data_dir: str = "./data/surrogate/simulations", batch_size: int = 64,
                 predict_split: str = "test"):
        super().__init__()
        self.data_dir, self.batch_size, self.predict_split = Path(data_dir), batch_size, predict_split

    def _split(self, name: str) -> TensorDataset:
        path = self.data_dir / f"{name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {name} split (run the simulation step first)")
        with np.load(path) as d:
            return TensorDataset(torch.from_numpy(d["x"]), torch.from_numpy(d["y"]))

    def train_dataloader(self):
        return DataLoader(self._split("train"), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self._split("val"), batch_size=1024)

    def test_dataloader(self):
        return DataLoader(self._split("test"), batch_size=1024)

    def predict_dataloader(self):
        return DataLoader(self._split(self.predict_split), batch_size=1024)
