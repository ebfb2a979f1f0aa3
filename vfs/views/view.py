"""What a view declares: its file name, why an image or level lacks it, how it is built and
what info.json says of it. Each view module declares its views; vfs/views/registry.py lists
them in order, and the tree (vfs/tree/build.py) offers them to every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

if TYPE_CHECKING:
    from ...adapters import Image
    from ..tree.nodes import DirNode, Node
    from .planes import PlaneSource
    from .tiff_views import TiffLayout

LEVEL = "{level}"  # in a view's name: the level's name (s0, s1, ...); such a view is made per level


@dataclass
class ImageContext:
    """What a view of a whole image is made from."""

    image: Image
    engine: object
    sources: list[PlaneSource]  # one per level
    image_dir: Callable[[Image], DirNode]  # the tree of an image (label images get their own)

    @property
    def mtime(self) -> float:
        return self.image.mtime


@dataclass
class LevelContext(ImageContext):
    """What a view of one level is made from."""

    index: int = 0
    layout: TiffLayout | None = None  # the level's TIFF geometry, shared by its TIFF views

    @property
    def name(self) -> str:
        return f"s{self.index}"

    @property
    def level(self):
        return self.image.levels[self.index]

    @property
    def src(self) -> PlaneSource:
        return self.sources[self.index]


Context = Union[ImageContext, LevelContext]


@dataclass(frozen=True)
class View:
    """A file or folder of each image (or, with LEVEL in its name, of each level).

    `name`: the entry's name; a trailing "/" marks a folder. `missing(ctx)`: why this image
    or level cannot have it, or None when it is present. `build(ctx)`: its node.
    `describe(node, ctx)`: its entry in info.json `views`; None for an entry info.json does
    not list (nor, when missing, in `missing_views`).
    """

    name: str
    missing: Callable[[Context], str | None]
    build: Callable[[Context], Node]
    describe: Callable[[Node, Context], dict] | None = None

    @property
    def per_level(self) -> bool:
        return LEVEL in self.name

    def name_for(self, ctx: Context) -> str:
        return self.name.replace(LEVEL, ctx.name) if self.per_level else self.name
