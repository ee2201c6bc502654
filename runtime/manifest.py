"""``manifest.json``: what an engine directory holds, written by export, read by every backend."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sed_trt.runtime.errors import ConfigError, EngineError
from sed_trt.runtime.fsutil import atomic_write, file_sha256, is_within
from sed_trt.runtime.io_spec import GRAPH_NAMES, ExportLimits, GraphSpec, ModelDims, TensorSpec, graph_specs
from sed_trt.runtime.jsonutil import read_json
from sed_trt.runtime.tokenizer import BPE_FILENAME

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB; a larger file is refused before it is read
MANIFEST_FORMAT = 4  # 4: the CER and labels graphs of device backends

log = logging.getLogger("sed_trt")


@dataclass
class EngineEntry:
    """A TensorRT plan built from one graph, and what it is tied to."""

    file: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: dict[str, list[list[int]]] = field(default_factory=dict)
    onnx_file: str = ""
    sha256: str = ""


@dataclass
class Manifest:
    """Everything the runtime needs to trust and drive the graphs of an engine directory."""

    backbone: str
    model_config: dict[str, Any]
    dims: ModelDims
    limits: ExportLimits
    pooling: int
    opset: int
    checkpoint_sha256: str | None
    text_fingerprint: str
    graphs: dict[str, str]
    graph_sha256: dict[str, str] = field(default_factory=dict)
    tokenizer_file: str = BPE_FILENAME
    tokenizer_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    fp16_graphs: dict[str, str] = field(default_factory=dict)  # mixed-precision graphs (export --fp16)
    fp16_sha256: dict[str, str] = field(default_factory=dict)
    int8_graphs: dict[str, str] = field(default_factory=dict)  # Q/DQ graphs (export --int8 --calibration)
    int8_sha256: dict[str, str] = field(default_factory=dict)
    int8_calibration: dict[str, Any] = field(
        default_factory=dict
    )  # what calibrated them (export.int8.CalibrationRecord)
    fp8_graphs: dict[str, str] = field(default_factory=dict)  # FP8 (E4M3) Q/DQ graphs (export --fp8 --calibration)
    fp8_sha256: dict[str, str] = field(default_factory=dict)
    fp8_calibration: dict[str, Any] = field(default_factory=dict)
    format: int = MANIFEST_FORMAT

    @property
    def specs(self) -> Mapping[str, GraphSpec]:
        return graph_specs(self.dims, self.pooling)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dims"] = self.dims.to_dict()
        d["limits"] = self.limits.to_dict()
        d["io"] = {
            name: {"inputs": [_tensor(t) for t in s.inputs], "outputs": [_tensor(t) for t in s.outputs]}
            for name, s in self.specs.items()
        }
        return d

    def save(self, directory: str | Path) -> Path:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        return atomic_write(Path(directory) / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def files(self) -> dict[str, tuple[str, str]]:
        """Every file the manifest vouches for: label -> (relative path, sha256 or '')."""
        out = {f"graph {name}": (rel, self.graph_sha256.get(name, "")) for name, rel in self.graphs.items()}
        out.update({f"graph fp16 {n}": (rel, self.fp16_sha256.get(n, "")) for n, rel in self.fp16_graphs.items()})
        out.update({f"graph int8 {n}": (rel, self.int8_sha256.get(n, "")) for n, rel in self.int8_graphs.items()})
        out.update({f"graph fp8 {n}": (rel, self.fp8_sha256.get(n, "")) for n, rel in self.fp8_graphs.items()})
        out["tokenizer"] = (self.tokenizer_file, self.tokenizer_sha256)
        out.update({f"engine {name}": (e.file, e.sha256) for name, e in self.engines.items()})
        return out

    def graphs_for(self, precision: str) -> dict[str, str]:
        """Graph file of every graph name for fp32, or for a reduced precision where its graphs were
        exported (fp16: mixed-precision; int8 / fp8: Q/DQ), the fp32 graph elsewhere."""
        if precision == "fp32":
            return dict(self.graphs)
        if precision not in _REDUCED:
            raise ConfigError(f"precision {precision!r}: use fp32, {', '.join(_REDUCED)}")
        reduced: dict[str, str] = getattr(self, f"{precision}_graphs")
        if not reduced:
            raise ConfigError(f"this engine directory has no {precision} graphs: export it with {_REDUCED[precision]}")
        return {name: reduced.get(name, rel) for name, rel in self.graphs.items()}

    def verify_files(self, directory: str | Path, *, which: tuple[str, ...] = ("graph", "tokenizer")) -> float:
        """Check each listed file's sha256 against the manifest; returns the seconds it took.

        A flipped byte in a graph changes results without any error from the runtime, so a
        mismatch is an :class:`EngineError`, never a warning. ``which`` picks the kinds of
        file ("graph", "tokenizer", "engine") the caller is about to use.
        """
        directory = Path(directory)
        start = time.perf_counter()
        for label, (rel, digest) in self.files().items():
            if label.split()[0] not in which:
                continue
            path = directory / rel
            if not digest:
                raise EngineError(
                    f"{str(directory / MANIFEST_NAME)!r} records no sha256 for {label} ({rel!r}); re-export the engines"
                )
            if not path.is_file():
                raise EngineError(f"engine directory {str(directory)!r} is incomplete: {rel!r} ({label}) is missing")
            if file_sha256(path) != digest:
                raise EngineError(
                    f"{str(path)!r} ({label}) does not match its sha256 in the manifest: the file is corrupt or was replaced; re-export the engines"
                )
        seconds = time.perf_counter() - start
        log.debug("verified %s in %s in %.2f s", ", ".join(which), directory, seconds)
        return seconds

    def read_verified(self, directory: str | Path, rel: str) -> bytes:
        """The bytes of file ``rel``, read once and checked against the manifest's sha256: what is
        loaded is what was verified (a directory swapped between a check by path and an open by
        path would serve a mix of two exports)."""
        digests = {r: (label, digest) for label, (r, digest) in self.files().items()}
        if rel not in digests:
            raise EngineError(f"{rel!r} is not a file of this engine directory's manifest")
        label, digest = digests[rel]
        path = Path(directory) / rel
        if not digest:
            raise EngineError(
                f"{str(Path(directory) / MANIFEST_NAME)!r} records no sha256 for {label} ({rel!r}); re-export the engines"
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EngineError(
                f"engine directory {str(directory)!r} is incomplete: {rel!r} ({label}) is missing"
            ) from None
        except OSError as exc:
            raise EngineError(f"cannot read {str(path)!r} ({label}): {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise EngineError(
                f"{str(path)!r} ({label}) does not match its sha256 in the manifest: the file is corrupt or was replaced; re-export the engines"
            )
        return data

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read and sanity-check ``DIR/manifest.json``; every problem is an :class:`EngineError`."""
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise EngineError(
                f"engine directory {str(directory)!r} does not exist; create it with 'sed-trt export' or 'make engine'"
            )
        if not path.is_file():
            raise EngineError(
                f"{str(path)!r} is missing: {str(directory)!r} is not an engine directory made by 'sed-trt export'"
            )
        d = read_json(path, what=f"manifest {str(path)!r}", max_bytes=MAX_MANIFEST_BYTES, error=EngineError)
        if not isinstance(d, dict):
            raise EngineError(
                f"{str(path)!r} is not a manifest (a JSON {type(d).__name__}, not an object); re-export the engines"
            )
        if d.get("format") != MANIFEST_FORMAT:
            raise EngineError(
                f"{str(path)!r} has manifest format {d.get('format')!r}; this sed-trt reads format {MANIFEST_FORMAT}: re-export the engines"
            )
        problem = _schema_problem(d)
        if problem:
            raise EngineError(f"{str(path)!r} is malformed: {problem}; re-export the engines")
        try:
            engines = {k: EngineEntry(**v) for k, v in d.get("engines", {}).items()}
            m = cls(
                backbone=d["backbone"],
                model_config=d["model_config"],
                dims=ModelDims.from_dict(d["dims"]),
                limits=ExportLimits.from_dict(d["limits"]),
                pooling=int(d["pooling"]),
                opset=int(d["opset"]),
                checkpoint_sha256=d.get("checkpoint_sha256"),
                text_fingerprint=d["text_fingerprint"],
                graphs=dict(d["graphs"]),
                graph_sha256=dict(d.get("graph_sha256", {})),
                tokenizer_file=d["tokenizer_file"],
                tokenizer_sha256=d["tokenizer_sha256"],
                versions=dict(d.get("versions", {})),
                engines=engines,
                fp16_graphs=dict(d.get("fp16_graphs", {})),
                fp16_sha256=dict(d.get("fp16_sha256", {})),
                int8_graphs=dict(d.get("int8_graphs", {})),
                int8_sha256=dict(d.get("int8_sha256", {})),
                int8_calibration=dict(d.get("int8_calibration", {})),
                fp8_graphs=dict(d.get("fp8_graphs", {})),
                fp8_sha256=dict(d.get("fp8_sha256", {})),
                fp8_calibration=dict(d.get("fp8_calibration", {})),
            )
            m.dims.check_pooling(m.pooling)
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(
                f"{str(path)!r} is malformed ({type(exc).__name__}: {exc}); re-export the engines"
            ) from None
        if d.get("io") != json.loads(json.dumps(m.to_dict()["io"])):
            raise EngineError(
                f"{str(path)!r}: its dims and pooling do not give the graphs' I/O it records (edited?); re-export the engines"
            )
        missing = [g for g in GRAPH_NAMES if g not in m.graphs]
        if missing:
            raise EngineError(f"{str(path)!r} lists no graph for {missing}; re-export the engines")
        unknown = sorted(set(m.graphs) - set(GRAPH_NAMES))
        if unknown:
            raise EngineError(f"{str(path)!r} lists unknown graphs {unknown}; re-export the engines")
        for label, (rel, _) in m.files().items():
            if (
                not isinstance(rel, str)
                or not rel
                or Path(rel).is_absolute()
                or not is_within(directory / rel, directory)
            ):
                raise EngineError(f"{str(path)!r}: {label} file {rel!r} is outside the engine directory; refusing it")
        for name, rel in [*m.graphs.items(), *m.fp16_graphs.items(), *m.int8_graphs.items(), *m.fp8_graphs.items()]:
            if not (directory / rel).is_file():
                raise EngineError(f"engine directory {str(directory)!r} is incomplete: {rel!r} ({name}) is missing")
        return m

    def check_backbone(self, backbone: str | None) -> None:
        """Refuse an engine directory exported for another backbone."""
        if backbone is not None and Path(backbone).stem != self.backbone:
            raise EngineError(
                f"engine directory was exported for backbone {self.backbone!r}, not {Path(backbone).stem!r}"
            )


# precision -> how to export its graphs (fp32 is every export's)
_REDUCED = {
    "fp16": "'sed-trt export --fp16' (TensorRT 11 takes precision from the ONNX)",
    "int8": "'sed-trt export --int8 --calibration DIR' (a folder of your photos)",
    "fp8": "'sed-trt export --fp8 --calibration DIR' (a folder of your photos; fp8 engines need an Ada or Hopper GPU)",
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# key -> (type, required) of a manifest's top level; nested tables are checked below
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "backbone": (str, True),
    "model_config": (dict, True),
    "dims": (dict, True),
    "limits": (dict, True),
    "pooling": (int, True),
    "opset": (int, True),
    "checkpoint_sha256": ((str, type(None)), True),
    "text_fingerprint": (str, True),
    "graphs": (dict, True),
    "graph_sha256": (dict, True),
    "tokenizer_file": (str, True),
    "tokenizer_sha256": (str, True),
    "versions": (dict, False),
    "engines": (dict, False),
    "fp16_graphs": (dict, False),
    "fp16_sha256": (dict, False),
    "int8_graphs": (dict, False),
    "int8_sha256": (dict, False),
    "int8_calibration": (dict, False),
    "fp8_graphs": (dict, False),
    "fp8_sha256": (dict, False),
    "fp8_calibration": (dict, False),
    "io": (dict, True),
}


def _schema_problem(d: dict[str, Any]) -> str:
    """What is wrong with a manifest's types and ranges ('' if nothing)."""
    for key, (kind, required) in _FIELDS.items():
        if key not in d:
            if required:
                return f"no {key!r}"
            continue
        if not isinstance(d[key], kind) or isinstance(d[key], bool):
            return f"{key!r} is a {type(d[key]).__name__}"
    for table in ("dims", "limits"):
        for key, value in d[table].items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                return f"{table}.{key} is {value!r}, not a positive whole number"
    for table in ("graphs", "fp16_graphs", "int8_graphs", "fp8_graphs"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in d.get(table, {}).items()):
            return f"{table!r} maps names to something other than file names"
    digests = [
        d["checkpoint_sha256"],
        d["tokenizer_sha256"],
        *d["graph_sha256"].values(),
        *d.get("fp16_sha256", {}).values(),
        *d.get("int8_sha256", {}).values(),
        *d.get("fp8_sha256", {}).values(),
    ]
    if not all(v is None or (isinstance(v, str) and (v == "" or _HEX64.fullmatch(v))) for v in digests):
        return "a sha256 that is not 64 hexadecimal digits"
    return ""


def _tensor(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
