"""Incremental ``<think>`` splitter.

Model text arrives in arbitrary pieces; a tag may be cut at any character (``"<thi"`` + ``"nk>"``).
The splitter emits every character as soon as it cannot be the start of a tag, and holds back only
the undecided suffix (at most ``len("</think>") - 1`` characters).

Output is a list of ``(is_reasoning, text)`` segments. A closing tag also yields
``(False, "")``: an explicit "reasoning block ended" marker, so that two blocks in a row become two
reasoning items even with nothing between them.

A ``</think>`` outside reasoning (a template that opened thinking in the prompt while the gateway
was told it did not) is dropped rather than leaked into the answer, unless ``keep_stray_close``
(NeMo Gym keeps it, and its verifiers split answers on it). Symmetrically, when told the
output starts inside reasoning, a ``<think>`` the model writes anyway before any text is dropped.
"""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
_LONGEST = max(len(OPEN_TAG), len(CLOSE_TAG))

Segment = tuple[bool, str]


class ThinkSplitter:
    __slots__ = ("inside", "_held", "_fresh", "_keep_stray_close")

    def __init__(self, starts_inside: bool = False, keep_stray_close: bool = False) -> None:
        self.inside = starts_inside
        self._keep_stray_close = keep_stray_close
        self._held = ""
        # Started inside and nothing but whitespace seen: a leading <think> is redundant.
        self._fresh = starts_inside

    def feed(self, text: str) -> list[Segment]:
        buf = self._held + text if self._held else text
        if "<" not in buf:  # the common case: no tag can start here
            self._held = ""
            if self._fresh and buf.strip():
                self._fresh = False
            return [(self.inside, buf)] if buf else []
        out: list[Segment] = []
        while True:
            cut, tag_len, closes = self._next_tag(buf)
            if cut < 0:
                break
            if cut:
                out.append((self.inside, buf[:cut]))
            self._fresh = False
            buf = buf[cut + tag_len :]
            if closes:
                if self.inside:
                    self.inside = False
                    out.append((False, ""))
                elif self._keep_stray_close:
                    out.append((False, CLOSE_TAG))
                # else: a stray </think> outside reasoning is dropped
            else:
                self.inside = True
        keep = self._undecided_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        emit = buf[: len(buf) - keep] if keep else buf
        if self._fresh and emit.strip():
            self._fresh = False
        if emit:
            out.append((self.inside, emit))
        return out

    @property
    def answering(self) -> bool:
        """Outside reasoning, nothing held back, past the start: ``feed`` of text in which no tag
        can begin (no ``<``) would give ``[(False, text)]`` and change nothing."""
        return not self.inside and not self._held and not self._fresh

    @property
    def holds_text(self) -> bool:
        """Answer text is held back (a possible tag start outside reasoning)."""
        return bool(self._held) and not self.inside

    def flush(self) -> list[Segment]:
        """End of stream: a held-back partial tag was text after all."""
        held, self._held = self._held, ""
        return [(self.inside, held)] if held else []

    def _next_tag(self, buf: str) -> tuple[int, int, bool]:
        """Position, length and kind (closing?) of the first tag that matters in this state."""
        close_at = buf.find(CLOSE_TAG)
        if self.inside:
            if self._fresh:
                open_at = buf.find(OPEN_TAG)
                if open_at >= 0 and not buf[:open_at].strip() and (close_at < 0 or open_at < close_at):
                    return (open_at, len(OPEN_TAG), False)  # redundant: already inside
            return (close_at, len(CLOSE_TAG), True)
        open_at = buf.find(OPEN_TAG)
        if open_at >= 0 and (close_at < 0 or open_at < close_at):
            return (open_at, len(OPEN_TAG), False)
        return (close_at, len(CLOSE_TAG), True)

    def _undecided_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a tag we look for."""
        start = max(0, len(buf) - _LONGEST + 1)
        i = buf.find("<", start)
        while i >= 0:
            tail = buf[i:]
            if CLOSE_TAG.startswith(tail) or ((not self.inside or self._fresh) and OPEN_TAG.startswith(tail)):
                return len(tail)
            i = buf.find("<", i + 1)
        return 0
