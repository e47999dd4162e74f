"""What a file a user named really is, so that the wrong kind gets one line instead of a decoder's traceback.

Every reader of user files (spec, probe data, checkpoints) asks :func:`read_text` or
:func:`describe_kind` first: a checkpoint given where a spec goes, a UTF-16 file, a folder or an
empty file is refused naming the file, what was expected and what was found.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from splicer.errors import SplicerError

# Leading bytes of the binary formats a user is likely to hand over by mistake.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ", "an xz archive"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"\x7fELF", "an executable"),
    (b"%PDF", "a PDF document"),
)


def describe_kind(path: Path) -> str | None:
    """What the file looks like when it is not plain text: 'a PyTorch checkpoint (zip archive)', ...; None for text."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (save it as UTF-8)"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        if any(name.endswith("data.pkl") for name in names):
            return "a PyTorch checkpoint (zip archive)"
        return "a zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an old-style PyTorch checkpoint?)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive"
    if b"\x00" in head:
        return "binary data"
    return None


def read_text(path: str | Path, expected: str, error: type[SplicerError] = SplicerError) -> str:
    """The UTF-8 text of ``path``; anything else is an ``error`` naming ``expected`` and what was found."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file (expected {expected})")
    if path.is_dir():
        raise error(f"{path}: expected {expected}; found a folder")
    try:
        kind = describe_kind(path)
        if kind is not None:
            raise error(f"{path}: expected {expected}; found {kind}")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: expected {expected}; found text that is not UTF-8 "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise error(f"{path}: expected {expected}; found an empty file")
    return text


def unreadable_checkpoint(path: Path, exc: Exception, expected: str) -> SplicerError:
    """The one-line error for a file ``torch.load`` refused: what the file is when it is no checkpoint at all
    (a spec, an image), else the last line of torch's message (a truncated or foreign checkpoint)."""
    if path.is_dir():
        return SplicerError(f"{path}: expected {expected}; found a folder")
    kind = describe_kind(path)
    if kind is None:
        kind = "an empty file" if path.stat().st_size == 0 else "text (a YAML spec?)"
    if not kind.startswith(("a PyTorch", "a Python pickle", "a damaged zip")):
        return SplicerError(f"{path}: expected {expected}; found {kind}")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    return SplicerError(f"{path}: expected {expected}; torch cannot load it: {reason}")
