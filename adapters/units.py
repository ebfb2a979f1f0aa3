"""Units and sample types, once, for the adapters that read them and the views that write them.

Units are NGFF's (UDUNITS-2 names); `unit_name` brings other formats' abbreviations to them.
"""

from __future__ import annotations

# -- units --------------------------------------------------------------------------------

UNIT_NAMES = {
    "nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "mm": "millimeter", "m": "meter", "s": "second", "ms": "millisecond",
}
NO_UNIT = ("pixel", "pixels", "px")
LENGTH_IN_METERS = {
    "angstrom": 1e-10, "attometer": 1e-18, "centimeter": 1e-2, "decimeter": 1e-1, "exameter": 1e18,
    "femtometer": 1e-15, "foot": 0.3048, "gigameter": 1e9, "hectometer": 1e2, "inch": 0.0254,
    "kilometer": 1e3, "megameter": 1e6, "meter": 1.0, "micrometer": 1e-6, "mile": 1609.344,
    "millimeter": 1e-3, "nanometer": 1e-9, "parsec": 3.0857e16, "petameter": 1e15, "picometer": 1e-12,
    "terameter": 1e12, "yard": 0.9144, "yoctometer": 1e-24, "yottameter": 1e24, "zeptometer": 1e-21,
    "zettameter": 1e21,
}
# Lengths as some BigDataViewer XMLs write them, which `unit_name` keeps as written.
LENGTH_ABBREVIATIONS = ("cm", "km", "pm", "Å")
# How ImageJ writes units (its Info property and TIFF description).
IMAGEJ_LENGTH_UNIT = {
    "micrometer": "micron", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
    "kilometer": "km", "picometer": "pm", "angstrom": "angstrom", "inch": "inch",
}
IMAGEJ_TIME_UNIT = {
    "second": "sec", "millisecond": "ms", "microsecond": "us", "nanosecond": "ns", "minute": "min", "hour": "hour",
    "day": "day",
}
# The OME UnitsLength / UnitsTime symbols.
OME_LENGTH_UNIT = {
    "angstrom": "Å", "attometer": "am", "centimeter": "cm", "decimeter": "dm", "femtometer": "fm", "foot": "ft",
    "inch": "in", "kilometer": "km", "meter": "m", "micrometer": "µm", "mile": "mi", "millimeter": "mm",
    "nanometer": "nm", "parsec": "pc", "picometer": "pm", "yard": "yd",
}
OME_TIME_UNIT = {
    "second": "s", "millisecond": "ms", "microsecond": "µs", "nanosecond": "ns", "minute": "min", "hour": "h",
    "day": "d",
}


def unit_name(u) -> str | None:
    """A unit as NGFF names it (UDUNITS-2), from the abbreviations other formats use."""
    if not isinstance(u, str) or not u.strip() or u.strip().lower() in NO_UNIT:
        return None
    u = u.strip()
    return UNIT_NAMES.get(u, u)


def is_length(unit: str | None) -> bool:
    return unit in LENGTH_IN_METERS or unit in LENGTH_ABBREVIATIONS


# -- sample types -------------------------------------------------------------------------

# The numeric types N5, BigDataViewer and Neuroglancer precomputed name, in the order their
# error messages list them, as numpy type codes without byte order.
SAMPLE_TYPES = {
    "uint8": "u1", "int8": "i1", "uint16": "u2", "int16": "i2", "uint32": "u4", "int32": "i4",
    "uint64": "u8", "int64": "i8", "float32": "f4", "float64": "f8",
}
# The OME-XML PixelType of each numpy type OME can hold.
OME_PIXEL_TYPE = {
    "int8": "int8", "int16": "int16", "int32": "int32", "uint8": "uint8", "uint16": "uint16",
    "uint32": "uint32", "float32": "float", "float64": "double",
}


def sample_types(byte_order: str, names=SAMPLE_TYPES) -> dict[str, str]:
    """Type name -> numpy code in one byte order ("<" or ">"); single bytes carry none."""
    return {n: SAMPLE_TYPES[n] if SAMPLE_TYPES[n][1] == "1" else byte_order + SAMPLE_TYPES[n] for n in names}
