"""A client of ``sed-trt serve`` over tritonclient (HTTP, or gRPC for ``grpc://`` URLs)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sed_trt.api import Segmentation
from sed_trt.runtime.errors import BackendUnavailableError, ConfigError, ServeError, install_hint
from sed_trt.runtime.vocab import validate_vocabulary
from sed_trt.serve.service import MODEL_NAME


def parse_url(url: str) -> tuple[str, str]:
    """``host:port``, ``http://host:port`` or ``grpc://host:port`` -> (scheme, "host:port"),
    or a one-line :class:`ConfigError` (https, no port, a port that is not a number)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    if scheme not in ("http", "grpc"):
        raise ConfigError(f"--url {url!r}: http://HOST:PORT, grpc://HOST:PORT or HOST:PORT (TLS is not supported)")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest.rstrip("/"):
        raise ConfigError(f"--url {url!r}: expected HOST:PORT with a port number, e.g. localhost:8000")
    return scheme, f"{host}:{int(port)}"


def _protocol(url: str) -> tuple[Any, str]:
    scheme, address = parse_url(url)
    try:
        if scheme == "grpc":
            import tritonclient.grpc as tc

            return tc, address
        import tritonclient.http as tc
    except ImportError:
        raise BackendUnavailableError(f"the client needs tritonclient: {install_hint('serve')}") from None
    return tc, address


def _reason(message: str) -> str:
    """The one line of a server error that says what went wrong (the last exception line of a traceback)."""
    lines = [ln.strip() for ln in message.replace("\\n", "\n").splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return causes[-1] if causes else (lines[0] if lines else "no reason given")


class SedClient:
    """One connection to a server; ``segment`` may be called from one thread at a time."""

    def __init__(self, url: str = "localhost:8000", *, timeout_s: float = 120.0, model: str = MODEL_NAME) -> None:
        self.url = url
        self.model = model
        self._client: Any = None
        self._tc, address = _protocol(url)
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if "http" in self._tc.__name__ else {}
        try:
            self._client = self._tc.InferenceServerClient(address, **kwargs)
        except Exception as exc:  # tritonclient's own types
            raise ServeError(f"{url}: {_reason(str(exc))}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        """Whether the server has loaded and warmed up the model."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:
            return False

    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        x = self._tc.InferInput(name, list(array.shape), datatype)
        x.set_data_from_numpy(array)
        return x

    def segment(
        self, image: np.ndarray, classes: list[str], *, topk: int | None = None, probs: bool = False
    ) -> Segmentation:
        """Segment an RGB uint8 image (H, W, 3) into ``classes``; a refused request raises :class:`ServeError`."""
        classes = validate_vocabulary(list(classes))  # an empty one cannot even be sent (no empty tensors)
        inputs = [
            self._input("image", np.ascontiguousarray(image, dtype=np.uint8)[None], "UINT8"),
            self._input("classes", np.array([[c.encode("utf-8") for c in classes]], dtype=object), "BYTES"),
            self._input("topk", np.array([[topk or 0]], dtype=np.int32), "INT32"),
            self._input("want_probs", np.array([[probs]], dtype=bool), "BOOL"),
        ]
        outputs = [self._tc.InferRequestedOutput(n) for n in ("labels", "kept", "probs", "error", "random_weights")]
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs)
        except Exception as exc:  # tritonclient's and the transport's own types
            raise ServeError(f"{self.url}: {_reason(str(exc))}") from None
        error = result.as_numpy("error").reshape(-1)[0]
        if error:
            raise ServeError(error.decode("utf-8") if isinstance(error, bytes) else str(error))
        return Segmentation(
            labels=result.as_numpy("labels")[0],
            classes=tuple(classes),
            kept=result.as_numpy("kept")[0],
            probs=result.as_numpy("probs")[0] if probs else None,
            random_weights=bool(result.as_numpy("random_weights").reshape(-1)[0]),
        )
