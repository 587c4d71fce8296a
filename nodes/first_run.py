"""First run: the shipped workflows load `character_identity_example.png`, an example character the
pack draws itself (scripts/make_example_reference.py). When ComfyUI lists the pack's nodes, the file
is copied into ComfyUI's input folder under that name — only if no file of that name is there, so a
user's own file (or their edit of the example) is never overwritten. Choosing another image in a
workflow's Load Image node is all it takes to use your own character."""
from __future__ import annotations

import logging
import os
from pathlib import Path

EXAMPLE_REFERENCE = "character_identity_example.png"
SHIPPED = Path(__file__).resolve().parent.parent / "workflows" / "inputs" / EXAMPLE_REFERENCE

log = logging.getLogger("character_identity")


def install_example_reference(input_folder: str | None = None) -> bool:
    """Copy the example into `input_folder` (ComfyUI's input folder by default) unless a file of its
    name is there; True when it was copied."""
    if input_folder is None:
        import folder_paths

        input_folder = folder_paths.get_input_directory()
    target = Path(input_folder) / EXAMPLE_REFERENCE
    try:
        data = SHIPPED.read_bytes()
        target.parent.mkdir(parents=True, exist_ok=True)
        # exclusive create: fails on anything already there (a file, a link), so nothing is overwritten
        with open(target, "xb") as out:
            try:
                out.write(data)
            except OSError:
                out.close()
                os.unlink(target)               # ours, half written: leave no broken example behind
                raise
    except FileExistsError:
        return False
    except OSError as exc:
        log.warning("Character Identity: could not copy the example reference into %s (%s); the example "
                    "workflows load %s, so choose your own image in their Load Image nodes",
                    input_folder, exc, EXAMPLE_REFERENCE)
        return False
    return True
