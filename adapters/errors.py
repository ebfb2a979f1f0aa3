"""Exceptions raised by adapters. Their messages are shown to users as they are."""


# What str.splitlines breaks on, shown escaped: a message quotes input (a path from a
# hostile XML may hold a carriage return) and must stay one line.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class NgffMountError(Exception):
    """Base class: a problem the user can act on, described in one line."""

    def __str__(self) -> str:
        return super().__str__().translate(_LINE_BREAKS)


class SourceNotFound(NgffMountError):
    """The URL does not lead to anything readable."""


class NotAnImage(NgffMountError):
    """Something is there, but no supported image metadata."""


class BadMetadata(NgffMountError):
    """Metadata exists but is broken or inconsistent."""


class Unsupported(NgffMountError):
    """A valid variant of a format that ngffmount does not handle yet."""


class ChunkReadError(NgffMountError):
    """A chunk could not be fetched or decoded (turns into EIO for one read)."""


class SourceGaveUp(ChunkReadError):
    """A request that kept failing until its retries or its time ran out: the source is not
    answering, so the same chunk asked again at once (the kernel retries a failed page) fails
    at once too."""


class SourceChanged(ChunkReadError):
    """An array changed at the source in a way the mount cannot follow (its metadata, or a
    chunk of a file indexed once): its reads fail until a remount (logged once where it was
    found, not per read)."""
