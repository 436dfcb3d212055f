"""OscillatorSurrogate: an MLP from the 4 parameters to the 32-point response."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from oscillator.physics import HIGH, LOW


class OscillatorSurrogate(L.LightningModule):
    def __init__(self, hidden_size: int = 128, layers: int = 3, learning_rate: float = 2e-3, outputs: int = 32):
        super().__init__()
        self.save_hyperparameters()
        # parameters scaled to [-1, 1] inside the model: callers pass physical values
        self.register_buffer("low", torch.tensor(LOW, dtype=torch.float32))
        self.register_buffer("high", torch.tensor(HIGH, dtype=torch.float32))
        sizes = [4] + [hidden_size] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden_size, outputs))
        self._test: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        return self.net(2 * (params - self.low) / (self.high - self.low) - 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("test_rmse", F.mse_loss(pred, y).sqrt())
        self._test.append((pred.detach().cpu(), y.detach().cpu()))

    def on_test_epoch_end(self):
        """The prediction-against-truth plot of the test split, logged to the MLflow run."""
        pred, truth = (torch.cat(t) for t in zip(*self._test, strict=True))
        self._test.clear()
        from lightning.pytorch.loggers import MLFlowLogger

        if isinstance(self.logger, MLFlowLogger):
            from itwinai.plots import prediction_vs_truth

            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp, "prediction-vs-truth.png")
                prediction_vs_truth(pred.numpy(), truth.numpy(), png, title="test split")
                self.logger.experiment.log_artifact(self.logger.run_id, str(png))

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs or 1))
        return [opt], [sched]
