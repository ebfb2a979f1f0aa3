"""OME-XML for the OME-TIFF view of one level (OME 2016-06 schema)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from ...adapters.units import OME_LENGTH_UNIT, OME_PIXEL_TYPE, OME_TIME_UNIT

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def ome_color(hex6: str | None) -> int | None:
    """OME colours are RGBA packed into a signed 32-bit integer."""
    try:
        rgb = int(hex6, 16) if hex6 and len(hex6) == 6 else None
    except ValueError:
        return None
    if rgb is None:
        return None
    rgba = (rgb << 8) | 0xFF
    return rgba - (1 << 32) if rgba >= 1 << 31 else rgba


def ome_xml(image, src, level_name: str) -> bytes:
    level = src.level
    attrs = {
        "ID": "Pixels:0", "DimensionOrder": "XYCZT", "Type": OME_PIXEL_TYPE[src.dtype.name],
        "SizeX": src.width, "SizeY": src.height, "SizeC": src.nc, "SizeZ": src.nz, "SizeT": src.nt,
        "BigEndian": "false", "Interleaved": "false", "SignificantBits": src.dtype.itemsize * 8,
    }
    for name, key in (("x", "PhysicalSizeX"), ("y", "PhysicalSizeY"), ("z", "PhysicalSizeZ")):
        p = src.pos[name]
        unit = level.axes[p].unit if p is not None else None
        # Without a unit OME would read the size as micrometers: leave it out rather than guess.
        if p is not None and unit in OME_LENGTH_UNIT and level.scale[p] > 0:
            attrs[key] = repr(float(level.scale[p]))
            attrs[key + "Unit"] = OME_LENGTH_UNIT[unit]
    t = src.pos["t"]
    if t is not None and level.axes[t].unit in OME_TIME_UNIT:
        attrs["TimeIncrement"] = repr(float(level.scale[t]))
        attrs["TimeIncrementUnit"] = OME_TIME_UNIT[level.axes[t].unit]
    pixel_attrs = " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs.items())
    channels = []
    for c in range(src.nc):
        meta = image.channels[c] if c < len(image.channels) else None
        ch = {"ID": f"Channel:0:{c}", "SamplesPerPixel": "1"}
        if meta is not None and meta.label:
            ch["Name"] = str(meta.label)
        color = ome_color(meta.color if meta is not None else None)
        if color is not None:
            ch["Color"] = str(color)
        channels.append("<Channel " + " ".join(f"{k}={quoteattr(v)}" for k, v in ch.items()) + "/>")
    name = quoteattr(f"{image.name} {level_name}".strip())
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="{OME_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{OME_NS} {OME_NS}/ome.xsd" Creator="ngffmount">'
        f'<Image ID="Image:0" Name={name}><Pixels {pixel_attrs}>'
        + "".join(channels)
        + f'<TiffData IFD="0" PlaneCount="{src.plane_count}"/>'
        "</Pixels></Image></OME>"
    )
    return xml.encode("utf-8")
