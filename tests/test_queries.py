"""Eq. 1-3: the multi-scale query sequence."""

import torch

from hieraquery_core.config import ScaleSpec, default_scales
from hieraquery_core.queries import MultiScaleQueries, grid_encoding


def test_default_scales_are_the_papers_336_queries():
    q = MultiScaleQueries(default_scales(), 32)
    assert [s.num_queries for s in q.scales] == [16, 64, 256]
    assert q.sequence_length == 336 + 2 * 3
    assert q().shape == (342, 32)


def test_start_end_wrap_each_scale_and_grid_encoding_is_added():
    q = MultiScaleQueries([ScaleSpec((2, 2), 0.5), ScaleSpec((3, 3), 1.0)], 16)
    z = q()
    slices = q.query_slices()
    assert slices == [slice(1, 5), slice(7, 16)]
    assert torch.equal(z[0], q.start[0]) and torch.equal(z[5], q.end[0])
    assert torch.equal(z[6], q.start[1]) and torch.equal(z[16], q.end[1])
    expected = q.queries[1] + q.grid_gain[1] * grid_encoding(16, (3, 3))
    assert torch.allclose(z[slices[1]], expected)


def test_grid_encoding_distinguishes_every_cell_and_both_axes():
    enc = grid_encoding(32, (4, 6))
    assert enc.shape == (24, 32)
    assert torch.cdist(enc, enc).add(torch.eye(24) * 10).min() > 1e-3
    # cell (0, 1) and cell (1, 0) differ: rows and columns are encoded separately
    assert not torch.allclose(enc[1], enc[6])


def test_split_returns_each_scales_states():
    q = MultiScaleQueries(default_scales(), 8)
    hidden = torch.arange(342).float().view(1, 342, 1).expand(2, -1, 8)
    parts = q.split(hidden)
    assert [p.shape[1] for p in parts] == [16, 64, 256]
    assert parts[0][0, 0, 0] == 1 and parts[1][0, 0, 0] == 19 and parts[2][0, -1, 0] == 340


def test_single_scale_is_the_same_module():
    single = MultiScaleQueries([ScaleSpec((16, 21), 1.0)], 8)
    assert single.sequence_length == 336 + 2
    assert len(single.split(torch.zeros(1, 338, 8))) == 1

