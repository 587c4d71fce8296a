"""What a cloud job costs, as each provider publishes it: a price per megapixel of output, a price
per call, or none published. The browser shows the estimate on each cloud node before Run."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Price:
    per_megapixel: float | None = None      # US$ per megapixel of each output image
    per_call: float | None = None           # US$ per request, whatever it returns
    approximate: bool = False               # the provider gives it as "~"
    source: str = ""                        # where the figure comes from (or why there is none)

    def estimate(self, width: int, height: int, num_images: int) -> float | None:
        if self.per_megapixel is not None:
            return self.per_megapixel * width * height / 1_000_000 * num_images
        return self.per_call

    def rule(self) -> dict:
        """The figures the browser computes its estimate from."""
        return asdict(self)
