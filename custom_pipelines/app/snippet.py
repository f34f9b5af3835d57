"""The "as Python" code of a request: the `from_pretrained` and the call that reproduce its images, as text.

The engine makes its call from the same `Call` object it renders here, so the code cannot drift from what ran: every
keyword argument carries its value (what the app passes) and its source (what the snippet writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Arg:
    value: Any  # what the app passes
    source: str  # how the snippet writes it


@dataclass
class Call:
    """One pipeline call: `pipe.<method>(**kwargs)<result>`, with the lines the snippet needs before it."""

    kwargs: dict[str, Arg]
    method: str = "__call__"
    result: str = "images"  # the output attribute holding the images ("images", or "grid" for style mixing)
    setup: list[str] = field(default_factory=list)  # e.g. seeds, input images
    imports: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        return {name: arg.value for name, arg in self.kwargs.items()}


def literal(value: Any) -> Arg:
    return Arg(value, repr(value))


def render(load_lines: list[str], imports: list[str], call: Call, saves_list: bool = True) -> str:
    """The whole snippet: imports, loading, setup, the call, and saving the images as PNG files."""
    lines = sorted(set(imports + call.imports), key=lambda line: (not line.startswith("import"), line))
    lines += ["", *load_lines, *call.setup]
    target = "pipe" if call.method == "__call__" else f"pipe.{call.method}"
    arguments = [f"    {name}={arg.source}," for name, arg in call.kwargs.items()]
    lines += [f"images = {target}(", *arguments, f").{call.result}"]
    if saves_list:
        lines += ["for i, image in enumerate(images):", '    image.save(f"image_{i}.png")']
    else:
        lines += ['images.save("image_0.png")']
    return "\n".join(lines) + "\n"
