"""The BigDataViewer dataset XML (SpimData 0.2): setups, timepoints, registrations and the
image loader (docs/formats.md, BigDataViewer; spimdata XmlKeys, XmlIoTimePoints, XmlHelpers)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import BadMetadata


@dataclass
class Setup:
    id: int
    name: str
    size: tuple[int, int, int] | None  # x, y, z
    voxel_size: tuple[float, float, float] | None  # x, y, z
    unit: str | None


@dataclass
class PathRef:
    path: str
    relative: bool


@dataclass
class Partition:
    path: PathRef
    timepoints: dict[int, int]  # timepoint id in the dataset -> id in the partition file
    setups: dict[int, int]


@dataclass
class SpimData:
    loader_format: str
    loader: ET.Element
    base_path: PathRef
    setups: list[Setup]
    timepoints: list[int]
    missing: set[tuple[int, int]] = field(default_factory=set)  # (timepoint, setup)
    registrations: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # composed affines

    def views(self) -> list[tuple[int, int]]:
        """(timepoint, setup) of every view that has image data, setup-major."""
        return [(t, s.id) for s in self.setups for t in self.timepoints if (t, s.id) not in self.missing]

    def first_timepoint(self, setup: int) -> int:
        """The first timepoint with data for a setup: its layout stands for the others."""
        return next(t for t in self.timepoints if (t, setup) not in self.missing)

    def path(self, tag: str) -> PathRef | None:
        return _path_ref(self.loader.find(tag))

    def partitions(self) -> list[Partition]:
        parts = []
        for elem in self.loader.findall("partition"):
            ref = _path_ref(elem.find("path"))
            if ref is None:
                raise BadMetadata("BDV XML: <partition> without <path>")
            tps = _ints(elem.findtext("timepoints"), "partition timepoints")
            setups = _ints(elem.findtext("setups"), "partition setups")
            tps_mapped = _ints(elem.findtext("timepointsMapped"), "timepointsMapped") if elem.find("timepointsMapped") is not None else tps
            setups_mapped = _ints(elem.findtext("setupsMapped"), "setupsMapped") if elem.find("setupsMapped") is not None else setups
            if len(tps_mapped) != len(tps) or len(setups_mapped) != len(setups):
                raise BadMetadata("BDV XML: partition id lists of different lengths")
            parts.append(Partition(ref, dict(zip(tps, tps_mapped)), dict(zip(setups, setups_mapped))))
        return parts


def looks_like_spimdata(raw: bytes | None) -> bool:
    if not raw:
        return False
    head = raw[:2048].lstrip()
    return head.startswith(b"<") and b"<SpimData" in head


def parse_spimdata(raw: bytes, where: str) -> SpimData:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise BadMetadata(f"broken XML in {where}: {exc}") from None
    if root.tag != "SpimData":
        raise BadMetadata(f"{where}: not a BigDataViewer dataset (root element <{root.tag}>, not <SpimData>)")
    seq = root.find("SequenceDescription")
    loader = seq.find("ImageLoader") if seq is not None else None
    if loader is None:
        raise BadMetadata(f"{where}: no SequenceDescription/ImageLoader")
    setups = [_setup(e, where) for e in seq.findall("ViewSetups/ViewSetup")]
    if not setups:
        raise BadMetadata(f"{where}: no ViewSetup")
    setups.sort(key=lambda s: s.id)
    base = _path_ref(root.find("BasePath")) or PathRef(".", True)
    data = SpimData(loader.get("format", ""), loader, base, setups, _timepoints(seq.find("Timepoints"), where))
    for mv in seq.findall("MissingViews/MissingView"):
        data.missing.add((_int(mv.get("timepoint"), "MissingView timepoint"), _int(mv.get("setup"), "MissingView setup")))
    for reg in root.findall("ViewRegistrations/ViewRegistration"):
        key = (_int(reg.get("timepoint"), "ViewRegistration timepoint"), _int(reg.get("setup"), "ViewRegistration setup"))
        data.registrations[key] = _composed(reg, where)
    return data


def _setup(elem: ET.Element, where: str) -> Setup:
    sid = _int(elem.findtext("id"), "ViewSetup id")
    size = elem.findtext("size")
    voxel = elem.find("voxelSize")
    vsize = unit = None
    if voxel is not None:
        unit = (voxel.findtext("unit") or "").strip() or None
        if voxel.findtext("size"):
            vsize = tuple(_floats(voxel.findtext("size"), 3, f"{where}: voxelSize of setup {sid}"))
    return Setup(
        sid, (elem.findtext("name") or "").strip() or f"setup {sid}",
        tuple(int(v) for v in _floats(size, 3, f"{where}: size of setup {sid}")) if size else None,
        vsize, unit,
    )


def _timepoints(elem: ET.Element | None, where: str) -> list[int]:
    if elem is None:
        return [0]
    kind = elem.get("type", "range")
    if kind == "range":
        first, last = _int(elem.findtext("first"), "Timepoints first"), _int(elem.findtext("last"), "Timepoints last")
        if last < first or last - first > 10**6:
            raise BadMetadata(f"{where}: Timepoints range {first}..{last}")
        return list(range(first, last + 1))
    if kind == "list":
        return sorted(_int(tp.findtext("id"), "Timepoint id") for tp in elem.findall("Timepoint"))
    if kind == "pattern":
        return integer_pattern(elem.findtext("integerpattern") or "")
    raise BadMetadata(f"{where}: unknown Timepoints type {kind!r}")


def integer_pattern(text: str) -> list[int]:
    """spimdata's IntegerPattern: "0-10:2, 15, 20-18" (empty means [0])."""
    if not text.strip():
        return [0]
    out: list[int] = []
    for entry in text.split(","):
        entry = entry.replace(" ", "").strip()
        if "-" in entry[1:]:
            cut = entry.index("-", 1)
            start, rest = int(entry[:cut]), entry[cut + 1:]
            end, step = (int(rest.split(":")[0]), int(rest.split(":")[1])) if ":" in rest else (int(rest), 1)
            if step <= 0 or abs(end - start) // step > 10**6:
                raise BadMetadata(f"Timepoints pattern {text!r}")
            out += list(range(start, end + 1, step)) if end > start else list(range(start, end - 1, -step))
        else:
            out.append(_int(entry, "Timepoints pattern"))
    return out


def _composed(reg: ET.Element, where: str) -> list[float]:
    """The ViewTransforms of one registration composed into one 3x4 affine (first listed is
    applied last, as spimdata's ViewRegistration.updateModel does)."""
    total = _identity()
    for vt in reg.findall("ViewTransform"):
        text = vt.findtext("affine")
        if text is None:
            continue
        total = _multiply(total, _floats(text, 12, f"{where}: ViewTransform affine"))
    return total


def _identity() -> list[float]:
    return [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0]


def _multiply(a: list[float], b: list[float]) -> list[float]:
    out = []
    for r in range(3):
        row = [sum(a[r * 4 + k] * b[k * 4 + c] for k in range(3)) for c in range(4)]
        row[3] += a[r * 4 + 3]
        out += row
    return out


def _path_ref(elem: ET.Element | None) -> PathRef | None:
    if elem is None or not (elem.text or "").strip():
        return None
    return PathRef(elem.text.strip(), elem.get("type") == "relative")


def _int(text, what: str) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        raise BadMetadata(f"BDV XML: {what} is not an integer: {text!r}") from None


def _ints(text, what: str) -> list[int]:
    return [_int(v, what) for v in (text or "").split()]


def _floats(text, n: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in (text or "").split()]
    except ValueError:
        values = []
    if len(values) != n:
        raise BadMetadata(f"{what} must be {n} numbers, got {text!r}")
    return values
