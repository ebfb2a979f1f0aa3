"""Exceptions raised by adapters. Their messages are shown to users as they are."""


class NgffMountError(Exception):
    """Base class: a problem the user can act on, described in one line."""


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
