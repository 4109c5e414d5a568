"""Summaries of a ratings dataset: how ratings vary with quality, latency and persona."""

import numpy as np

from rlli_jax.qoe.dataset import RatingsDataset
from rlli_jax.qoe.distill import spearman
from rlli_jax.qoe.personas import TRAIT_NAMES
from rlli_jax.qoe.simulator import simulated_mos

QUALITY_BANDS = (0.0, 0.25, 0.5, 0.75, 1.0)
LATENCY_BANDS_S = (0.0, 1.0, 4.0, 15.0, np.inf)


def _band_means(values: np.ndarray, ratings: np.ndarray, edges) -> list[dict]:
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (values >= low) & (values < high) if high != edges[-1] else (values >= low)
        count = int(inside.sum())
        rows.append(
            {
                "band": f"[{low:g}, {high:g}" + ("]" if high == edges[-1] else ")"),
                "num_ratings": count,
                "mean_rating": float(ratings[inside].mean()) if count else float("nan"),
            }
        )
    return rows


def summarise_ratings(dataset: RatingsDataset) -> dict:
    """Return counts, the rating histogram, band means and rank correlations of a dataset.

    Keys: num_ratings, num_failed, num_bad_lines, parse_rate (ratings / (ratings + failed)),
    histogram (ratings 1-5), mean_rating, by_quality and by_latency (band rows),
    spearman_quality, spearman_log_latency, spearman_simulator (against the noise-free
    simulated MOS of the same personas and outcomes), and per trait spearman_<trait>.
    """
    ratings = dataset.ratings
    num_requests = dataset.num_ratings + dataset.num_failed
    summary = {
        "num_ratings": dataset.num_ratings,
        "num_failed": dataset.num_failed,
        "num_bad_lines": len(dataset.bad_lines),
        "parse_rate": dataset.num_ratings / num_requests if num_requests else float("nan"),
        "histogram": {k: int(np.sum(ratings == k)) for k in range(1, 6)},
        "mean_rating": float(ratings.mean()) if ratings.size else float("nan"),
        "by_quality": _band_means(dataset.quality, ratings, QUALITY_BANDS),
        "by_latency": _band_means(dataset.latency_s, ratings, LATENCY_BANDS_S),
    }
    if ratings.size < 2:
        return summary
    mos = np.asarray(simulated_mos(dataset.traits, dataset.quality, dataset.latency_s))
    summary["spearman_quality"] = spearman(dataset.quality, ratings)
    summary["spearman_log_latency"] = spearman(np.log(dataset.latency_s), ratings)
    summary["spearman_simulator"] = spearman(mos, ratings)
    for index, name in enumerate(TRAIT_NAMES):
        summary[f"spearman_{name}"] = spearman(dataset.traits[:, index], ratings)
    return summary
