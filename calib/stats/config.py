"""How a statistics pass runs: ``StatsConfig``, histogram modes and their default bin counts."""

from __future__ import annotations

from dataclasses import dataclass

from calib.placement import Placement

HISTOGRAM_MODES = ("stream", "two-pass")
DEFAULT_BINS = {"stream": 4096, "two-pass": 2048}


@dataclass(frozen=True)
class StatsConfig:
    """How to collect statistics. ``tensors``: 'placement' (inputs of the ops the placement quantizes,
    plus float model outputs), 'all' (every float tensor), or explicit names."""

    tensors: str | tuple[str, ...] = "placement"
    placement: str | Placement = "tensorrt"  # which activations 'placement' collects
    batch_size: int = 16
    histogram: str = "stream"
    bins: int | None = None  # default per mode: 4096 (stream) / 2048 (two-pass)
    optimization: str = "all"  # ORT graph optimisation; exposed tensors are graph outputs, so kept
    threads: int | None = None  # cores: ORT intra-op threads and accumulating threads (default: all)
    pad_multiple: int = 8
    # With threads >= 2: accumulate batch k in a background thread while ORT runs batch k+1, for batches
    # whose exposed activations take at most overlap_max_mb; larger batches are accumulated in between
    # runs, split over `threads` threads, so only one of them is alive at a time.
    overlap: bool = True
    overlap_max_mb: float = 192.0
    # Per-channel absmax / mean and a uniform sample of token vectors for the inputs of weighted
    # MatMuls (K floats each + sample_rows x K); 0 rows keeps no sample.
    channel_stats: bool = True
    sample_rows: int = 512
    outlier_rows: int = 64  # plus the rows with the largest max |x|, exactly (see ChannelStats)
