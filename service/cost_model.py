"""How long a backend batch of n items takes, learnt online from the batches it ran.

An exponentially weighted mean per batch size seen (recent batches count most: the machine's
speed drifts), and for sizes not seen yet a least-squares line ``t = a + b * n`` through those
means; with a single size seen, time proportional to n. Nothing seen yet: no prediction, so the
batcher admits everything until it has learnt.
"""

from __future__ import annotations

SMOOTHING = 0.2
"""Weight of the newest observation in a size's mean."""


class BatchCostModel:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.means: dict[int, float] = {}

    def observe(self, size: int, seconds: float) -> None:
        old = self.means.get(size)
        self.means[size] = seconds if old is None else old + self.smoothing * (seconds - old)

    def predict(self, size: int) -> float | None:
        """Predicted seconds for a batch of ``size``; ``None`` before any observation."""
        if size <= 0:
            return 0.0
        if size in self.means:
            return self.means[size]
        if not self.means:
            return None
        if len(self.means) == 1:
            [(seen, seconds)] = self.means.items()
            return seconds * size / seen
        sizes, times = list(self.means), list(self.means.values())
        n_mean = sum(sizes) / len(sizes)
        t_mean = sum(times) / len(times)
        slope = sum((n - n_mean) * (t - t_mean) for n, t in zip(sizes, times, strict=True)) / sum(
            (n - n_mean) ** 2 for n in sizes
        )
        slope = max(slope, 0.0)  # noise must never make bigger batches predict faster
        return max(t_mean + slope * (size - n_mean), 0.0)
