"""PyTorch runner for static models (`pruned.pt`) and supernets in deployed mode.

A static model runs its compiled eager schedule (`StaticModel.infer`), a supernet its `forward`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..ir import StaticModel
from .base import InputSpec, Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: torch.nn.Module, input_spec: InputSpec, output_names: list[str], source: str,
                 device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(input_spec, output_names, source)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._run = model.infer if isinstance(model, StaticModel) else self.model

    @classmethod
    def from_static(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                    max_batch: int | None = None) -> TorchRunner:
        from ..formats.static import load_static

        art = load_static(path)
        i = art.input
        spec = InputSpec(channels=i["channels"], height=i["height"], width=i["width"], dtype=i["dtype"],
                         max_batch=max_batch)
        return cls(art.model, spec, art.task_names, str(path), device=device, threads=threads)

    @torch.inference_mode()
    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = self._run(torch.from_numpy(image).to(self.device))
        return {k: out[k].detach().float().cpu().numpy() for k in self.output_names}
