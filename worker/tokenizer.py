"""Tokenizers behind one small protocol: an offline byte tokenizer and a transformers wrapper.

Tests, CPU smoke runs and benchmarks build randomly initialised models and must not download
anything, so `ByteTokenizer` needs no files at all: ids 0 = pad, 1 = eos, 2 = unk, and byte b is
id b + 3 (vocabulary 259). `HFTokenizer` wraps a pretrained tokenizer (FLAN-T5's) behind the
same interface, so data encoding and evaluation code never know which one they have.

Both append eos and both can truncate from the head or the tail: DSS inputs put the question at
the end of a long preamble, so inputs are truncated keeping the tail, and the question survives.

FLAN-T5's SentencePiece vocabulary has no piece containing "{" or "}" (T5's authors dropped
every C4 page with braces): they encode to <unk>, so a Query DSL label could never be
generated and exact match would be 0 for every trial. `HFTokenizer` therefore adds, as tokens
of their own, the printable ASCII characters that no piece of the vocabulary contains. No piece
can straddle such a character, so nothing else is split differently; SentencePiece only starts
the stretch after one as a new word, which adds a space there on decoding (harmless to JSON
compared as parsed). FLAN-T5's embedding has 32,128 rows for 32,100 pieces, so the added ids
fit without resizing the model; `worker.models` resizes any model that has no room.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable
from typing import Any, Final, Literal, Protocol, runtime_checkable

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "Keep",
    "TextTokenizer",
    "load_tokenizer",
    "unrepresentable_characters",
]

Keep = Literal["head", "tail"]

log = logging.getLogger(__name__)

_REPLACEMENT: Final = "\ufffd".encode()

# Characters a structured target (JSON, code) may need; whitespace is the normaliser's business.
_PRINTABLE: Final = tuple(c for c in string.printable if not c.isspace())


@runtime_checkable
class TextTokenizer(Protocol):
    """What the data pipeline and evaluation need from a tokenizer."""

    @property
    def pad_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, max_length: int, *, keep: str = "head") -> list[int]:
        """At most `max_length` ids ending with eos; when truncating keep the head or tail."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text up to the first eos, pads skipped."""
        ...


def _check_encode_args(max_length: int, keep: str) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (room for eos), got {max_length}")
    if keep not in ("head", "tail"):
        raise ValueError(f"keep must be 'head' or 'tail', got {keep!r}")


def _truncate(ids: list[int], room: int, keep: str) -> list[int]:
    if len(ids) <= room:
        return ids
    return ids[:room] if keep == "head" else ids[len(ids) - room :]


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, no download, exact round trip."""

    PAD: Final = 0
    EOS: Final = 1
    UNK: Final = 2
    OFFSET: Final = 3

    @property
    def pad_token_id(self) -> int:
        return self.PAD

    @property
    def eos_token_id(self) -> int:
        return self.EOS

    @property
    def vocab_size(self) -> int:
        return 256 + self.OFFSET

    def encode(self, text: str, max_length: int, *, keep: str = "head") -> list[int]:
        _check_encode_args(max_length, keep)
        # Lone surrogates (legal in JSON "\ud800" escapes, not in UTF-8) become "?" rather
        # than failing a training run on one odd record.
        data = text.encode("utf-8", errors="replace")
        room = max_length - 1
        if len(data) > room:
            # Cut on a character boundary so a truncated text still decodes cleanly: never
            # keep half of a multi-byte character (continuation bytes are 0b10xxxxxx).
            if keep == "head":
                cut = room
                while cut > 0 and data[cut] & 0xC0 == 0x80:
                    cut -= 1
                data = data[:cut]
            else:
                start = len(data) - room
                while start < len(data) and data[start] & 0xC0 == 0x80:
                    start += 1
                data = data[start:]
        return [b + self.OFFSET for b in data] + [self.EOS]

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for raw in ids:
            i = int(raw)  # Accepts tensors' elements as well as ints.
            if i == self.EOS:
                break
            if i == self.PAD:
                continue
            if self.OFFSET <= i < self.vocab_size:
                out.append(i - self.OFFSET)
            else:
                out += _REPLACEMENT  # unk, or an id a larger model head produced.
        return out.decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer (e.g. FLAN-T5's SentencePiece) behind `TextTokenizer`.

    transformers is imported here, not at module level, so `ByteTokenizer` users (and the
    controller, which has no transformers) never pay for or need it.
    """

    def __init__(self, name_or_path: str, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.name_or_path = name_or_path
        self._tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        eos = self._tok.eos_token_id
        if eos is None:
            raise ValueError(f"tokenizer {name_or_path!r} has no eos token; seq2seq needs one")
        pad = self._tok.pad_token_id
        self._eos = int(eos)
        # Labels are masked by position (see batching.collate), not by id, so falling back to
        # eos for padding does not hide the real eos from the loss.
        self._pad = int(pad) if pad is not None else self._eos
        self.added_characters = unrepresentable_characters(self._tok)
        if self.added_characters:
            self._tok.add_tokens(list(self.added_characters))
            log.info(
                "tokenizer %s cannot write %s: added as tokens %d..%d",
                name_or_path,
                " ".join(self.added_characters),
                len(self._tok) - len(self.added_characters),
                len(self._tok) - 1,
            )

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def eos_token_id(self) -> int:
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        """The beginning-of-sequence id a decoder-only prompt starts with (Llama), if any."""
        bos = self._tok.bos_token_id
        return int(bos) if bos is not None else None

    def chat_frame(self) -> tuple[list[int], list[int]] | None:
        """The ids the chat template puts before and after one user message (with the
        assistant's turn opened), or None when the tokenizer has no chat template."""
        if not getattr(self._tok, "chat_template", None):
            return None
        mark = "\u2063LADDER-MESSAGE\u2063"
        text = str(self._tok.apply_chat_template(
            [{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True))
        head, _, tail = text.partition(mark)
        return (list(self._tok(head, add_special_tokens=False)["input_ids"]),
                list(self._tok(tail, add_special_tokens=False)["input_ids"]))

    @property
    def vocab_size(self) -> int:
        # len() counts added tokens; the model's embedding may be larger (T5 pads to 32,128).
        return len(self._tok)

    def encode(self, text: str, max_length: int, *, keep: str = "head") -> list[int]:
        _check_encode_args(max_length, keep)
        ids = list(self._tok(text, add_special_tokens=False)["input_ids"])
        return [*_truncate(ids, max_length - 1, keep), self._eos]

    def save_pretrained(self, directory: str) -> None:
        """Write the tokenizer, added characters included, beside saved weights."""
        self._tok.save_pretrained(directory)

    def decode(self, ids: Iterable[int]) -> str:
        kept: list[int] = []
        for raw in ids:
            i = int(raw)
            if i == self._eos:
                break
            if i != self._pad:
                kept.append(i)
        return str(self._tok.decode(kept, skip_special_tokens=True))


def unrepresentable_characters(tok: Any) -> tuple[str, ...]:
    """Printable ASCII characters that a transformers tokenizer can only encode as unk.

    A character counts when it does not survive encode/decode and no ordinary piece of the
    vocabulary contains it (special tokens such as "</s>" do not count: they are never
    produced from text), so adding it as a token cannot change how any other text splits.
    """
    special = set(tok.all_special_tokens)
    # Every character of every ordinary piece, gathered once (32k pieces for FLAN-T5).
    in_pieces = set("".join(piece for piece in tok.get_vocab() if piece not in special))
    missing = []
    for char in _PRINTABLE:
        if char in in_pieces:
            continue
        ids = tok(char, add_special_tokens=False)["input_ids"]
        if tok.decode(ids, skip_special_tokens=True).strip() != char:
            missing.append(char)
    return tuple(missing)


def load_tokenizer(name_or_path: str | None) -> TextTokenizer:
    """None or "byte" gives the offline `ByteTokenizer`; anything else a pretrained tokenizer."""
    if name_or_path is None or name_or_path == "byte":
        return ByteTokenizer()
    return HFTokenizer(name_or_path)
