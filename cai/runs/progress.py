"""A progress bar with samples done, samples/s and generated tokens/s (tqdm), silent when disabled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Progress:
    """Counts finished samples; a ticker refreshes tokens/s from `tokens()` while samples are still running."""

    def __init__(self, total: int, tokens: Callable[[], int] = lambda: 0, enabled: bool = True,
                 unit: str = "sample", rate_label: str = "tok/s"):
        self._rate_label = rate_label
        self._tokens = tokens
        self._tokens_at_start = tokens()
        self._start = time.monotonic()
        self._bar = None
        self._ticker: asyncio.Task | None = None
        if enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True)

    def _refresh(self) -> None:
        if self._bar is not None:
            elapsed = max(time.monotonic() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{(self._tokens() - self._tokens_at_start) / elapsed:.1f} {self._rate_label}")

    def start_ticker(self, seconds: float = 2.0) -> None:
        async def tick():
            while True:
                await asyncio.sleep(seconds)
                self._refresh()

        if self._bar is not None:
            self._ticker = asyncio.get_running_loop().create_task(tick())

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._refresh()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._bar is not None:
            self._bar.close()
