"""Annotated images: boxes, class names and scores drawn on the picture.

Each class has its own colour from a fixed palette of saturated, mutually distinct
colours; a label is written in white or black (whichever contrasts with the colour) on a
filled band above its box (inside the box when the box touches the top edge).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from ldexport.model.detector import Detections

# Tableau-like palette: distinct hues that stay readable on photographs
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (0, 190, 190), (188, 189, 34), (255, 215, 0),
    (0, 90, 255), (255, 0, 110), (0, 200, 90), (120, 60, 255), (255, 90, 0),
)  # fmt: skip


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour of class ``label``."""
    return PALETTE[label % len(PALETTE)]


def _text_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_detections(image: Image.Image, detections: Detections, class_names: Sequence[str]) -> Image.Image:
    """A copy of ``image`` (RGB) with ``detections`` (boxes in its pixels) drawn on it."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = max(2, round(max(canvas.size) / 400))
    # lowest score first, so that the best boxes end on top
    for index in detections.scores.argsort().tolist():
        x1, y1, x2, y2 = (float(value) for value in detections.boxes[index])
        label = int(detections.labels[index])
        colour = class_colour(label)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {float(detections.scores[index]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 4, bottom - top + 4
        y = y1 - height if y1 - height >= 0 else y1
        draw.rectangle((x1, y, x1 + width, y + height), fill=colour)
        draw.text((x1 + 2 - left, y + 2 - top), text, fill=_text_colour(colour), font=font)
    return canvas
