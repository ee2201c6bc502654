"""Triton model repositories for stock ``tritonserver`` (NVIDIA's container, Kubernetes).

Two forms, both served by the same ``sed`` model interface (inputs ``image``, ``classes``,
``topk``, ``want_probs``; outputs ``labels``, ``kept``, ``probs``, ``error``):

- ``python`` (default): one Python-backend model ``sed`` that runs the whole pipeline with
  any backend (TensorRT on ``KIND_GPU`` instances, ONNX Runtime or OpenVINO on ``KIND_CPU``)
  through :mod:`sed_trt.serve.triton_model`; dynamic batching of requests.
- ``bls``: every TensorRT plan of the engine directory is its own ``tensorrt_plan`` model
  (``sed_<graph>``, its config from the I/O spec), and ``sed`` orchestrates them with BLS
  calls (:mod:`sed_trt.serve.bls`: CER and the label map are plan models too). Triton then
  schedules each graph itself (instance counts per graph, its own metrics). It needs
  Triton's TensorRT backend, so a GPU machine.

Each ``sed`` model reads ``settings.json`` beside its config: a
:class:`~sed_trt.runtime.deployment.Deployment` as JSON (what to open and how to predict; its
``batch_size`` is Triton's ``max_batch_size``), paths made absolute for the serving machine.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sed_trt.runtime.deployment import CACHE_DEFAULT, CACHE_OFF, Deployment
from sed_trt.runtime.errors import ConfigError
from sed_trt.runtime.fsutil import check_writable_dir, staged_directory
from sed_trt.runtime.io_spec import GRAPH_NAMES, GraphSpec, TensorSpec
from sed_trt.serve.service import INPUTS, MODEL_NAME, OUTPUTS, TensorDef

BLS_PREFIX = "sed_"
TRITON_TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
MODEL_PY = '''"""The sed model: sed_trt's Triton Python-backend model (see sed_trt/serve/triton_model.py)."""

from sed_trt.serve.triton_model import TritonPythonModel  # noqa: F401
'''


BLS_LABEL = "triton-bls"  # the backend label of the bls form's sed model (each graph its own plan model)
DEFAULT_TORCH_BATCH = 4  # the torch backend has no export limit: images per batch unless told


@dataclass(frozen=True)
class InstanceConfig:
    """Triton's side: instances, where they run, batching and versions."""

    instances: int = 1
    kind: str = "KIND_CPU"  # KIND_GPU for TensorRT and torch on a GPU
    gpus: tuple[int, ...] = ()
    queue_delay_us: int = 2000  # how long the dynamic batcher waits to grow a batch


def _dims(shape: tuple[Any, ...]) -> str:
    return "[ " + ", ".join(str(d if isinstance(d, int) else -1) for d in shape) + " ]"


def _tensor_block(t: TensorDef, *, is_input: bool) -> str:
    extra = ""
    if is_input and t.optional:
        extra = " optional: true"
    elif is_input:
        extra = " allow_ragged_batch: true"  # photos of different sizes, vocabularies of different lengths
    return f'  {{ name: "{t.name}" data_type: {t.triton_type} dims: {_dims(t.shape)}{extra} }}'


def sed_config(settings: Deployment, instances: InstanceConfig) -> str:
    """``config.pbtxt`` of the ``sed`` model."""
    gpus = f" gpus: [ {', '.join(map(str, instances.gpus))} ]" if instances.gpus else ""
    return "\n".join(
        [
            f'name: "{MODEL_NAME}"',
            'backend: "python"',
            f"max_batch_size: {settings.batch_size or 1}",
            "input [",
            ",\n".join(_tensor_block(t, is_input=True) for t in INPUTS),
            "]",
            "output [",
            ",\n".join(_tensor_block(t, is_input=False) for t in OUTPUTS),
            "]",
            f"dynamic_batching {{ max_queue_delay_microseconds: {instances.queue_delay_us} }}",
            f"instance_group [ {{ kind: {instances.kind} count: {instances.instances}{gpus} }} ]",
            "version_policy: { latest: { num_versions: 1 } }",
            'parameters: { key: "settings" value: { string_value: "settings.json" } }',
            "",
        ]
    )


def _spec_block(t: TensorSpec) -> str:
    return f'  {{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: {_dims(t.shape)} }}'


def graph_shapes(spec: GraphSpec, sizes: dict[str, int]) -> dict[str, tuple[int, ...]] | None:
    """Every input's shape with the named axes set to ``sizes``; None when an axis stays free."""
    shapes = {}
    for t in spec.inputs:
        dims = [d if isinstance(d, int) else sizes.get(d) for d in t.shape]
        if any(d is None for d in dims):
            return None
        shapes[t.name] = tuple(int(d) for d in dims if d is not None)
    return shapes


def plan_config(
    name: str, spec: GraphSpec, instances: InstanceConfig, *, graph_sizes: dict[str, int] | None = None
) -> str:
    """``config.pbtxt`` of one graph as a ``tensorrt_plan`` model (shapes from the I/O spec).

    ``graph_sizes`` (CUDA graphs asked for): Triton's TensorRT backend captures a CUDA graph for
    the one shape those axis sizes fix (``optimization.cuda.graph_spec``, batch_size 0 as
    ``max_batch_size: 0`` requires; other shapes run without one). Graphs with an axis the sizes
    leave free (the photo's, the label band's width) get none."""
    gpus = f" gpus: [ {', '.join(map(str, instances.gpus))} ]" if instances.gpus else ""
    optimization = []
    shapes = graph_shapes(spec, graph_sizes) if graph_sizes is not None else None
    if shapes is not None:
        inputs = " ".join(
            f'input {{ key: "{n}" value {{ dim: [ {", ".join(map(str, d))} ] }} }}' for n, d in shapes.items()
        )
        optimization = [f"optimization {{ cuda {{ graphs: true graph_spec [ {{ batch_size: 0 {inputs} }} ] }} }}"]
    return "\n".join(
        [
            f'name: "{name}"',
            'platform: "tensorrt_plan"',
            "max_batch_size: 0",  # the batch axis is the spec's own B (explicit in every shape)
            "input [",
            ",\n".join(_spec_block(t) for t in spec.inputs),
            "]",
            "output [",
            ",\n".join(_spec_block(t) for t in spec.outputs),
            "]",
            f"instance_group [ {{ kind: KIND_GPU count: 1{gpus} }} ]",
            *optimization,
            "version_policy: { latest: { num_versions: 1 } }",
            "",
        ]
    )


def stored_deployment(settings: Deployment, *, engine_path: str | None = None) -> Deployment:
    """The deployment as the serving machine reads it: the batch size settled (default: the
    engines' export limit; larger is refused), paths absolute (or ``engine_path``, a container's
    volume), the cache policy as given (the server's own default cache, not the writer's)."""
    from sed_trt.runtime.manifest import Manifest

    changes: dict[str, Any] = {}
    if settings.engine_dir is not None:
        manifest = Manifest.load(settings.engine_dir)
        if settings.backend_label.startswith("tensorrt") or settings.backend == BLS_LABEL:
            check_tensorrt_version(manifest, settings.engine_dir)
        limit = manifest.limits.max_batch
        if settings.batch_size is not None and settings.batch_size > limit:
            raise ConfigError(
                f"--max-batch {settings.batch_size}: the engines in {settings.engine_dir!r} were exported for batches of up to {limit} (sed-trt export --max-batch)"
            )
        changes["batch_size"] = settings.batch_size or limit
        changes["engine_dir"] = engine_path or str(Path(settings.engine_dir).resolve())
    else:
        changes["batch_size"] = settings.batch_size or DEFAULT_TORCH_BATCH
    if settings.weights is not None:
        changes["weights"] = str(Path(settings.weights).resolve())
    if settings.backbone is not None and Path(settings.backbone).is_file():  # a config file, not a name
        changes["backbone"] = str(Path(settings.backbone).resolve())
    if settings.cache not in (CACHE_DEFAULT, CACHE_OFF):
        changes["cache"] = str(Path(settings.cache).resolve())
    return settings.replace(**changes)


def check_tensorrt_version(manifest: Any, engine_dir: str) -> None:
    """A plan runs only on the TensorRT that built it: where TensorRT is importable (NVIDIA's
    container, a GPU machine), refuse engines built by another version in one line."""
    try:
        import tensorrt
    except ImportError:
        return
    here = str(tensorrt.__version__)
    built = sorted({e.tensorrt_version for e in manifest.engines.values()})
    if not built:
        raise ConfigError(f"{engine_dir!r} has no TensorRT engines: build them here first (make engine)")
    if built != [here]:
        raise ConfigError(
            f"the engines in {engine_dir!r} were built with TensorRT {', '.join(built)}; this machine has {here}: "
            "rebuild them with this TensorRT (make engine here, or in the serving container)"
        )


def write_repository(
    out: str | Path,
    settings: Deployment,
    instances: InstanceConfig = InstanceConfig(),
    *,
    form: str = "python",
    engine_path: str | None = None,
) -> list[Path]:
    """Write a model repository into ``out`` (new or empty); returns the files written.

    ``engine_path``: where the engine directory is on the serving machine (a container's
    volume), if not where ``settings.engine_dir`` says.
    """
    from sed_trt.runtime.manifest import Manifest

    if form not in ("python", "bls"):
        raise ConfigError(f"--form {form!r}: python or bls")
    stored = stored_deployment(settings, engine_path=engine_path)

    final = Path(out)
    check_writable_dir(final, "--out")
    check_servable_path(final)
    written: list[Path] = []
    with staged_directory(final, "--out") as stage:  # whole or not at all (a full disk leaves nothing)

        def write(rel: str, text: str) -> None:
            path = stage / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(final / rel)

        if form == "bls":
            if settings.engine_dir is None:
                raise ConfigError("--form bls needs --engine-dir (a directory with TensorRT engines)")
            manifest = Manifest.load(settings.engine_dir)
            missing = [g for g in GRAPH_NAMES if g not in manifest.engines]
            if missing:
                raise ConfigError(
                    f"--form bls needs TensorRT engines for every graph; {settings.engine_dir!r} has none for {missing}"
                )
            gpu = InstanceConfig(kind="KIND_GPU", gpus=instances.gpus)
            # CUDA graphs for the shape most runs have: one photo, a full chunk of classes
            sizes = {"B": 1, "N": manifest.limits.class_chunk} if settings.options.get("cuda_graphs") else None
            for graph, spec in manifest.specs.items():
                config = plan_config(f"{BLS_PREFIX}{graph}", spec, gpu, graph_sizes=sizes)
                write(f"{BLS_PREFIX}{graph}/config.pbtxt", config)
                plan = stage / f"{BLS_PREFIX}{graph}" / "1" / "model.plan"
                plan.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(settings.engine_dir) / manifest.engines[graph].file, plan)
                written.append(final / plan.relative_to(stage))
            stored = stored.replace(backend=BLS_LABEL)
        write(f"{MODEL_NAME}/config.pbtxt", sed_config(stored, instances))
        write(f"{MODEL_NAME}/settings.json", json.dumps(stored.to_dict(), indent=2, sort_keys=True) + "\n")
        write(f"{MODEL_NAME}/1/model.py", MODEL_PY)
    os.chmod(final, 0o755)
    return written


def check_servable_path(path: Path, flag: str = "--out") -> None:
    """Refuse a repository path Triton's Python stub cannot start from: the backend passes the
    model's path to the stub on a command line split at spaces, so a path with whitespace (or a
    character outside printable ASCII) makes the stub fail to start and the server wait."""
    text = str(path.resolve())
    bad = sorted({c for c in text if c.isspace() or not (c.isascii() and c.isprintable())})
    if bad:
        raise ConfigError(
            f"{flag} {text!r}: Triton's Python backend cannot load a model from a path with {', '.join(repr(c) for c in bad)}; choose another directory"
        )


def check_repository(repository: Path) -> None:
    """Refuse, in one line and before Triton starts, a repository the ``sed`` model cannot load
    from: no ``sed/config.pbtxt``, no ``sed/1/model.py``, a ``settings.json`` that is not a
    deployment, a path the Python stub cannot start from."""
    from sed_trt.runtime.jsonutil import read_json

    sed = repository / MODEL_NAME
    if not (sed / "config.pbtxt").is_file():
        raise ConfigError(
            f"--repository {str(repository)!r} holds no sed/config.pbtxt (write one with 'sed-trt triton-repo')"
        )
    if not (sed / "1" / "model.py").is_file():
        raise ConfigError(f"--repository {str(repository)!r}: sed/1/model.py is missing (write the repository again)")
    settings = read_json(
        sed / "settings.json", what=f"--repository {str(repository)!r}: sed/settings.json", max_bytes=1 << 20
    )
    deployment = Deployment.from_dict(settings)
    if deployment.engine_dir is not None and not (Path(deployment.engine_dir) / "manifest.json").is_file():
        raise ConfigError(
            f"--repository {str(repository)!r}: its engine directory {deployment.engine_dir!r} holds no manifest.json"
        )
    check_servable_path(repository, "--repository")
