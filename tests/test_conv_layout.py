"""The grouped-conv layout value: dense <-> per-conv-group blocks, both ways, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splitc.graph.conv_layout import ConvLayout


@pytest.mark.parametrize("out,inp,k", [(8, 4, 1), (8, 4, 2), (12, 6, 3), (16, 16, 16)])
def test_round_trip_and_the_dense_form_is_the_same_conv(out: int, inp: int, k: int) -> None:
    torch.manual_seed(k)
    layout = ConvLayout(out, inp, k)
    w = torch.randn(out, inp // k, 3, 3)
    dense = layout.to_dense(w)
    assert dense.shape == (out, inp, 3, 3)
    assert torch.equal(layout.from_dense(dense), w)
    off = ~torch.as_tensor(layout.block_mask())
    assert torch.all(dense[off] == 0)
    x = torch.randn(2, inp, 7, 7)
    assert torch.allclose(F.conv2d(x, w, groups=k), F.conv2d(x, dense), atol=1e-5)


def test_weights_off_the_blocks_are_refused_unless_unchecked() -> None:
    layout = ConvLayout(4, 4, 2)
    dense = torch.ones(4, 4)
    with pytest.raises(ValueError, match="off the 2 conv-group blocks"):
        layout.from_dense(dense)
    assert torch.equal(layout.from_dense(dense, check=False), torch.ones(4, 2))
    with pytest.raises(ValueError, match="do not split"):
        ConvLayout(6, 4, 4)


def test_block_mask_is_block_diagonal() -> None:
    assert np.array_equal(ConvLayout(4, 2, 2).block_mask(), [[1, 0], [1, 0], [0, 1], [0, 1]])
