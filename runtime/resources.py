"""Memory estimates checked before expensive work: a one-line refusal instead of an out-of-memory kill."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from sed_trt.runtime.io_spec import CLASS_AXIS, DECODER_STAGE0, FUSE_GRAPHS, GraphSpec, ModelDims


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, lowered by a cgroup limit (None: unknown)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def per_class_decoder_bytes(specs: Mapping[str, GraphSpec]) -> int:
    """Bytes per class the predictor holds at its peak: one decoder stage's per-class outputs
    (for the whole vocabulary) while the next stage's are written."""
    sizes = []
    for graph in (DECODER_STAGE0, *FUSE_GRAPHS):
        total = 0
        for t in specs[graph].outputs:
            if CLASS_AXIS in t.shape:
                total += 4 * math.prod(d for d in t.shape if isinstance(d, int))
        sizes.append(total)
    return max(a + b for a, b in zip(sizes, sizes[1:]))


def vocabulary_bytes(num_classes: int, dims: ModelDims, specs: Mapping[str, GraphSpec], *, decoder: bool = True) -> int:
    """Host memory a vocabulary costs: its text features (T, P, E) and, unless the decoder's
    arrays live on a device (``decoder=False``), the decoder's per-class state."""
    return num_classes * (4 * dims.num_templates * dims.embed_dim + (per_class_decoder_bytes(specs) if decoder else 0))


def check_memory(need: int, what: str, *, error: type[Exception]) -> None:
    """Raise ``error`` when ``need`` bytes exceed what this machine has available."""
    have = available_memory()
    if have is not None and need > have:
        raise error(f"{what} needs about {gb(need)} of memory; this machine has {gb(have)} available")
