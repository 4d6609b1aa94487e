"""How long a backend batch of n items takes, learnt online from the batches it ran.

A batch's time is two parts: decoding its images, which grows with their pixels (a 40 MP photo
decodes for a second, a 0.3 MP one in milliseconds), and the rest (the model on n inputs, the
hops), which grows with n. Keyed by n alone, the model learnt one client's heavy photos and
refused everyone else's small ones as unmeetable. So where the worker says how long it decoded
(``WorkerTiming.decode_ms``), decoding is learnt as seconds per pixel and the rest per size;
a prediction is the rest for n plus the pixels of that batch at the learnt rate.

For the rest, per batch size seen, an exponentially weighted mean and mean absolute deviation
(recent batches count most: the machine's speed drifts), as TCP estimates round-trip times
(Jacobson/Karels).
For sizes not seen yet, a least-squares line ``t = a + b * n`` through the sizes seen; with a
single size seen, time proportional to n. Nothing seen yet: no prediction, so the batcher admits
everything until it has learnt.

``predict`` is the expected time (exported next to the measured one); ``bound`` adds
``BOUND_SPREAD`` deviations, a time most batches stay under: admission control uses it, so
that the requests it admits finish in time instead of being cut at their deadline after the
backend spent work on them.
"""

from __future__ import annotations

SMOOTHING = 0.2
"""Weight of the newest observation in a size's mean and deviation."""
BOUND_SPREAD = 2.0
"""Deviations above the mean in ``bound`` (TCP's timeout uses 4 for a far rarer event)."""
OUTLIER = 4.0
"""A batch over this many times its size's bound is believed only when the next batch is past
it too. One batch that waited out a worker's restart (killed while no batch ran, so nothing
failed and the dispatcher's rule after a failure does not apply) otherwise taught the model a
restart, and the next request was refused as unmeetable (the short soak in CI)."""


class BatchCostModel:
    def __init__(self, smoothing: float = SMOOTHING) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.means: dict[int, float] = {}
        self.deviations: dict[int, float] = {}
        self.decode_s_per_pixel: float | None = None
        self._suspect: tuple[int, float] | None = None  # an outlier waiting to be confirmed

    def observe(
        self, size: int, seconds: float, pixels: int = 0, decode_s: float | None = None
    ) -> None:
        """Learns a batch's time (of ``pixels`` in all, ``decode_s`` of it decoding when the
        worker said); a lone ``OUTLIER`` is held back until the next batch says whether the
        backend really became that slow."""
        if decode_s is not None and pixels > 0:
            rate = decode_s / pixels
            known = self.decode_s_per_pixel
            self.decode_s_per_pixel = (
                rate if known is None else known + self.smoothing * (rate - known)
            )
            seconds = max(seconds - decode_s, 0.0)
        bound = self._estimate(size, spread=BOUND_SPREAD)
        outlier = bound is not None and seconds > OUTLIER * bound
        suspect, self._suspect = self._suspect, None
        if outlier and suspect is None:
            self._suspect = (size, seconds)
            return
        if outlier and suspect is not None:
            self._learn(*suspect)
        self._learn(size, seconds)

    def _learn(self, size: int, seconds: float) -> None:
        if (mean := self.means.get(size)) is None:
            # no spread assumed until seen: a fresh gateway admits rather than refuses
            self.means[size], self.deviations[size] = seconds, 0.0
            return
        deviation = self.deviations[size]
        self.deviations[size] = deviation + self.smoothing * (abs(seconds - mean) - deviation)
        self.means[size] = mean + self.smoothing * (seconds - mean)

    def predict(self, size: int, pixels: int = 0) -> float | None:
        """Expected seconds for a batch of ``size`` images of ``pixels`` in all; ``None``
        before any observation."""
        return self._with_decoding(self._estimate(size, spread=0.0), pixels)

    def bound(self, size: int, pixels: int = 0) -> float | None:
        """Seconds a batch of ``size`` images of ``pixels`` most likely stays under; ``None``
        before any observation."""
        return self._with_decoding(self._estimate(size, spread=BOUND_SPREAD), pixels)

    def _with_decoding(self, rest: float | None, pixels: int) -> float | None:
        if rest is None or self.decode_s_per_pixel is None:
            return rest
        return rest + self.decode_s_per_pixel * pixels

    def _estimate(self, size: int, spread: float) -> float | None:
        if size <= 0:
            return 0.0
        if size in self.means:
            return self.means[size] + spread * self.deviations[size]
        if not self.means:
            return None
        times = {n: self.means[n] + spread * self.deviations[n] for n in self.means}
        if len(times) == 1:
            [(seen, seconds)] = times.items()
            return seconds * size / seen
        n_mean = sum(times) / len(times)
        t_mean = sum(times.values()) / len(times)
        slope = sum((n - n_mean) * (t - t_mean) for n, t in times.items()) / sum(
            (n - n_mean) ** 2 for n in times
        )
        slope = max(slope, 0.0)  # noise must never make bigger batches predict faster
        return max(t_mean + slope * (size - n_mean), 0.0)
