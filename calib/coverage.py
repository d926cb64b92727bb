"""How well a calibration set covers a target length distribution (an eval split or production).

Bucket counts use token lengths before truncation (what production sends). The distances (KS,
Wasserstein), the longest covered length and the warnings compare lengths as the model sees them,
i.e. capped at ``max_length`` when one is given: a 900-token text calibrates the same ranges as a
512-token one when the model truncates at 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from calib.buckets import DEFAULT_EDGES, bucket_counts, bucket_labels, check_edges
from calib.errors import InputError

# Thresholds for the plain-language warnings.
LONG_TAIL_SHARE = 0.05  # target share beyond the longest calibration text that is worth a warning
BUCKET_MIN_TARGET_SHARE = 0.10  # a bucket this large in the target ...
BUCKET_UNDER_RATIO = 0.5  # ... with under half that share in calibration is under-represented
KS_WARN = 0.2
LABEL_MIN_TARGET_SHARE = 0.05
LABEL_UNDER_RATIO = 0.5
TRUNCATED_WARN = 0.10  # a share of texts cut at max_length worth a warning

TABLE_HEADERS = ("bucket (tokens)", "calibration", "calib %", "target", "target %", "difference (points)")


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    qs = np.percentile(values, [50, 90, 95, 99])
    return {"p50": float(qs[0]), "p90": float(qs[1]), "p95": float(qs[2]), "p99": float(qs[3]),
            "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %" if share >= 0.01 or share == 0 else f"{share * 100:.1f} %"


@dataclass(frozen=True)
class Coverage:
    """Calibration lengths against target lengths, bucket by bucket and overall."""

    edges: tuple[int, ...]
    buckets: tuple[str, ...]
    calib_counts: tuple[int, ...]
    target_counts: tuple[int, ...]
    calib_shares: tuple[float, ...]
    target_shares: tuple[float, ...]
    ks: float  # two-sample Kolmogorov–Smirnov statistic (0 = same distribution, 1 = disjoint)
    ks_pvalue: float
    wasserstein: float  # earth mover's distance in tokens
    calib_stats: dict[str, float]  # p50/p90/p95/p99/min/max/mean of the capped lengths
    target_stats: dict[str, float]
    longest_covered: int  # the longest calibration text as the model sees it
    target_share_beyond: float  # share of target texts longer than that
    max_length: int | None
    calib_truncated: float  # share longer than max_length (0 when no max_length)
    target_truncated: float
    label_names: tuple[str, ...]
    calib_label_counts: tuple[int, ...]
    target_label_counts: tuple[int, ...]
    warnings: tuple[str, ...]
    target_name: str = "evaluation"
    n_calib: int = 0
    n_target: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Coverage:
        values = dict(data)
        for name in ("edges", "buckets", "calib_counts", "target_counts", "calib_shares", "target_shares",
                     "label_names", "calib_label_counts", "target_label_counts", "warnings"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)  # type: ignore[arg-type]

    def table_rows(self) -> list[list[object]]:
        """Rows for :data:`TABLE_HEADERS`: one per bucket, shares in percent."""
        return [
            [name, c, round(cs * 100, 1), t, round(ts * 100, 1), round((cs - ts) * 100, 1)]
            for name, c, t, cs, ts in zip(self.buckets, self.calib_counts, self.target_counts,
                                          self.calib_shares, self.target_shares)
        ]

    def label_rows(self) -> list[list[object]]:
        """Rows (label, calibration, calib %, target, target %) for the label balance."""
        nc, nt = max(sum(self.calib_label_counts), 1), max(sum(self.target_label_counts), 1)
        return [
            [name, c, round(c / nc * 100, 1), t, round(t / nt * 100, 1)]
            for name, c, t in zip(self.label_names, self.calib_label_counts,
                                  self.target_label_counts or (0,) * len(self.label_names))
        ]

    def headline(self) -> dict[str, object]:
        return {"ks": round(self.ks, 4), "wasserstein": round(self.wasserstein, 2),
                "longest_covered": self.longest_covered, "target_p95": self.target_stats.get("p95"),
                "target_p99": self.target_stats.get("p99"), "warnings": len(self.warnings)}


def _label_counts(labels: np.ndarray | None, k: int) -> tuple[int, ...]:
    if labels is None or k == 0:
        return ()
    labels = np.asarray(labels, dtype=np.int64)
    return tuple(int(c) for c in np.bincount(labels[(labels >= 0) & (labels < k)], minlength=k))


def coverage(
    calib_lengths: np.ndarray,
    target_lengths: np.ndarray,
    edges: Sequence[int] = DEFAULT_EDGES,
    calib_labels: np.ndarray | None = None,
    target_labels: np.ndarray | None = None,
    label_names: Sequence[str] = (),
    max_length: int | None = None,
    *,
    target_name: str = "evaluation",
) -> Coverage:
    """Compare calibration lengths (N,) with target lengths (M,), token counts before truncation.

    ``calib_labels``/``target_labels`` are label ids into ``label_names`` (-1 = none);
    ``target_name`` names the target in warnings ("evaluation", "production").
    """
    from scipy import stats

    edges = check_edges(edges)
    calib = np.asarray(calib_lengths, dtype=np.int64)
    target = np.asarray(target_lengths, dtype=np.int64)
    if calib.ndim != 1 or len(calib) == 0:
        raise InputError("coverage needs at least one calibration length")
    if target.ndim != 1 or len(target) == 0:
        raise InputError("coverage needs at least one target length")
    names = bucket_labels(edges)
    cc, tc = bucket_counts(calib, edges), bucket_counts(target, edges)
    cs, ts = cc / cc.sum(), tc / tc.sum()
    seen_c = np.minimum(calib, max_length) if max_length else calib
    seen_t = np.minimum(target, max_length) if max_length else target
    ks = stats.ks_2samp(seen_c, seen_t)
    wasserstein = float(stats.wasserstein_distance(seen_c, seen_t))
    longest = int(seen_c.max())
    beyond = float(np.mean(seen_t > longest))
    k = len(label_names)
    c_labels, t_labels = _label_counts(calib_labels, k), _label_counts(target_labels, k)

    warnings: list[str] = []
    tname = target_name
    if beyond >= LONG_TAIL_SHARE:
        warnings.append(f"no calibration text longer than {longest} tokens while {_pct(beyond)} of {tname} "
                        "texts are: activations of longer inputs may fall outside the calibrated ranges")
    for b, name in enumerate(names):
        lo = edges[b]
        if (max_length and lo >= max_length) or lo >= longest:
            continue  # beyond what the model sees, or already said by the warning above
        if ts[b] >= BUCKET_MIN_TARGET_SHARE and cs[b] < BUCKET_UNDER_RATIO * ts[b]:
            warnings.append(f"the {name} token bucket holds {_pct(ts[b])} of {tname} texts but only "
                            f"{_pct(cs[b])} of calibration texts")
    if ks.statistic > KS_WARN:
        # a positive sign: the calibration CDF runs above the target's, i.e. calibration is shorter
        direction = "shorter" if getattr(ks, "statistic_sign", np.mean(seen_c) - np.mean(seen_t) < 0) > 0 else "longer"
        warnings.append(f"calibration lengths differ from {tname} lengths (KS statistic {ks.statistic:.2f}); "
                        f"calibration texts run {direction} (mean {np.mean(seen_c):.0f} vs "
                        f"{np.mean(seen_t):.0f} tokens)")
    if max_length:
        cut_t, cut_c = float(np.mean(target > max_length)), float(np.mean(calib > max_length))
        if max(cut_t, cut_c) >= TRUNCATED_WARN:
            warnings.append(f"{_pct(cut_t)} of {tname} texts and {_pct(cut_c)} of calibration texts are longer than "
                            f"the max length of {max_length} tokens and are truncated: the model never sees their "
                            "ends (raise --max-length if the model allows it)")
    if c_labels and t_labels and sum(t_labels) and sum(c_labels):
        nc, nt = sum(c_labels), sum(t_labels)
        for name, c, t in zip(label_names, c_labels, t_labels):
            share_c, share_t = c / nc, t / nt
            if share_t >= LABEL_MIN_TARGET_SHARE and share_c < LABEL_UNDER_RATIO * share_t:
                what = "no calibration texts" if c == 0 else f"{_pct(share_c)} of calibration texts"
                warnings.append(f"label {name!r} is {_pct(share_t)} of {tname} texts but {what}")
    return Coverage(
        edges=edges, buckets=tuple(names),
        calib_counts=tuple(int(x) for x in cc), target_counts=tuple(int(x) for x in tc),
        calib_shares=tuple(float(x) for x in cs), target_shares=tuple(float(x) for x in ts),
        ks=float(ks.statistic), ks_pvalue=float(ks.pvalue), wasserstein=wasserstein,
        calib_stats=_percentiles(seen_c), target_stats=_percentiles(seen_t),
        longest_covered=longest, target_share_beyond=beyond, max_length=max_length,
        calib_truncated=float(np.mean(calib > max_length)) if max_length else 0.0,
        target_truncated=float(np.mean(target > max_length)) if max_length else 0.0,
        label_names=tuple(str(n) for n in label_names), calib_label_counts=c_labels,
        target_label_counts=t_labels, warnings=tuple(warnings), target_name=target_name,
        n_calib=len(calib), n_target=len(target),
    )
