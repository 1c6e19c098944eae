"""Shared test setup: one torch thread per worker (the suite runs under xdist on 2 cores)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained_resnet20(tmp_path_factory) -> tuple[Path, float]:
    """resnet20 trained briefly (Adam, 2 epochs) on synthetic:fast, saved as a state dict: the
    trained start of the from-trained and refit tests, with its validation accuracy."""
    from splitc.data.batches import accuracy
    from splitc.data.loaders import load_data
    from splitc.graph import zoo

    torch.manual_seed(0)
    bundle = load_data("synthetic:fast", seed=0)
    model = zoo.build("resnet20", bundle.num_classes)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(2):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(model.state_dict(), path)
    return path, accuracy(model, bundle.val, torch.device("cpu"))
