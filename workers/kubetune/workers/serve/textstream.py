"""Turning generated token ids into text deltas, honouring stop sequences.

Byte-level BPE can split one character over several tokens, and a stop sequence can
arrive split over tokens too, so a streamed delta must never contain half a character
or the start of a stop sequence that later completes. Pure, so it is unit-tested alone.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextAssembler:
    """Feed the full decoded text after each token; get back what is safe to emit."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = stops
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def update(self, decoded: str) -> str:
        """The new safe delta; sets `stopped` when a stop sequence appeared."""
        if self.stopped:
            return ""
        cut = min((i for i in (decoded.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = decoded[:cut]
            return self._emit_to(len(self.text))
        self.text = decoded
        safe = decoded.rstrip(REPLACEMENT)
        return self._emit_to(len(safe) - _held_back(safe, self.stops))

    def finish(self) -> str:
        """Generation ended (length or end-of-sequence): release anything held back."""
        return self._emit_to(len(self.text))

    def _emit_to(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta
