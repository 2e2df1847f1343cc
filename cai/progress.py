"""A progress bar with samples done, samples/s and generated tokens/s (tqdm), silent when disabled."""

from __future__ import annotations

import time


class Progress:
    def __init__(self, total: int, enabled: bool = True, unit: str = "sample"):
        self._tokens = 0
        self._start = time.monotonic()
        self._bar = None
        if enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True)

    def update(self, tokens: int = 0) -> None:
        self._tokens += tokens
        if self._bar is not None:
            self._bar.update(1)
            elapsed = max(time.monotonic() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{self._tokens / elapsed:.0f} tok/s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
