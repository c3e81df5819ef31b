"""Streaming text without broken characters.

A token can end in the middle of a character: a Hangul syllable is three
bytes of UTF-8, an emoji four, and byte-level tokens split them. Decoding
each token alone prints U+FFFD. :class:`TextStream` takes token bytes as
they come and gives back only whole characters, holding an incomplete
tail until the next token completes it. The generator asks
:attr:`TextStream.pending` before it stops at ``num_predict``, so a
character cut by the limit is finished with a token or three more; a tail
that still never completes (the model ended inside a character) is dropped
at the end rather than shown as U+FFFD.

It also applies stop sequences on the decoded text: text that could be the
start of a stop sequence is held back until it is clearly not, so a stop
sequence is never half-printed, and one that falls inside a multibyte
character can only match once that character is whole.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None
        """The stop sequence that ended the text, once one has."""

    def feed(self, data: bytes) -> str:
        """Bytes in; the text that is now safe to show out ("" while waiting)."""
        if self.stopped:
            return ""
        return self._release(self._decoder.decode(data, final=False))

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished character are waiting for the next token."""
        return bool(self._decoder.getstate()[0])

    def finish(self) -> str:
        """End of generation: whatever is held; a character that never completed is dropped."""
        if self.stopped:
            return ""
        self._decoder.reset()
        text, self._held = self._held, ""
        return text  # held text is only ever the start of a stop, never a whole one

    def _release(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        if not self._stops:
            return text
        found = [(at, stop) for stop in self._stops if (at := text.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda pair: pair[0])
            self.stopped = True
            return text[:cut]
        # Hold back the longest tail that is a prefix of some stop sequence.
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), keep, -1):
                if stop.startswith(text[-length:]):
                    keep = length
                    break
        if keep:
            self._held = text[-keep:]
            return text[:-keep]
        return text
