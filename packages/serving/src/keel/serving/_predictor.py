"""The predictor: a verified artifact turned into a callable torch model.

``load_predictor`` verifies the artifact (signature, manifest, every file hash) with a
keel.artifacts ``TrustPolicy`` *before* a byte is deserialised, builds the model from the
manifest's architecture through a registered builder (no stored code runs), configures
torch's thread pools and the device, and warms the model up once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keel.artifacts import ArtifactError, LoadedArtifact, Manifest, TrustPolicy, load_artifact
from keel.serving._builders import resolve_builders
from keel.serving._errors import ConfigError, ModelLoadError
from keel.serving._schema import InputSchema, OutputSchema, compile_fields

_threads_lock = threading.Lock()
_threads_set: list[int] = []


def configure_torch_threads(threads: int, interop_threads: int = 1) -> None:
    """Set torch's intra-op threads (every call) and inter-op threads (once per process:
    torch refuses to change them after the first parallel op)."""
    import torch  # pants: no-infer-dep

    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    with _threads_lock:
        torch.set_num_threads(threads)
        if not _threads_set:
            # RuntimeError: already fixed by an earlier parallel op
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(max(1, interop_threads))
            _threads_set.append(interop_threads)


def pick_device(requested: str = "auto") -> str:
    """``auto``: cuda when a GPU is visible, else cpu. ``cuda`` without a GPU is an error."""
    import torch  # pants: no-infer-dep

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is visible")
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda (got {requested!r})")
    return requested


@dataclass
class Predictor:
    """A loaded model and its contract. ``predict`` takes the float32 matrix that
    ``inputs.encode_*`` produced and returns an (n, k) float array."""

    name: str
    digest: str
    version: str
    manifest: Manifest
    inputs: InputSchema
    outputs: OutputSchema
    model: Any
    device: str
    signer: str | None
    loaded_at: float = field(default_factory=time.time)
    fast: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    fast_of: Any = field(default=None, repr=False)  # the model ``fast`` was compiled from

    @property
    def light(self) -> bool:
        """True when forward passes run on the NumPy fast path (tens of microseconds a
        batch): the micro-batcher then runs them inline on the event loop by default."""
        return self.fast is not None and self.model is self.fast_of

    @property
    def feature_views(self) -> list[tuple[str, str]]:
        return [(v.name, v.version) for v in self.manifest.feature_views]

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.light:
            assert self.fast is not None
            y_np = self.fast(np.asarray(x, dtype=np.float32))
            return y_np[:, None] if y_np.ndim == 1 else y_np
        import torch  # pants: no-infer-dep

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if self.device != "cpu":
                t = t.to(self.device, non_blocking=True)
            y = self.model(t)
            if isinstance(y, tuple | list):
                y = y[0]
            out: np.ndarray = y.detach().to("cpu").numpy()
        if out.ndim == 1:
            out = out[:, None]
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "signer": self.signer,
            "device": self.device,
            "inputs": [f.describe() for f in self.inputs.fields],
            "outputs": [f.describe() for f in self.outputs.fields],
            "feature_views": [{"name": n, "version": v} for n, v in self.feature_views],
        }


TRACE_SAFE_BUILDERS = frozenset({"mlp"})


def _numpy_forward(model: Any, n_in: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The built-in MLP (an ``nn.Sequential`` of Linear, ReLU/Tanh/SiLU/Sigmoid/Softmax and
    eval-mode Dropout) as NumPy matmuls on its float32 weights, or None for anything else
    or when its answers differ from torch's on a random batch. For a small model torch's
    per-call overhead (dispatch, tensor wrapping, inference mode) is most of a forward
    pass: NumPy runs a 20->64->32->1 MLP on one row several times faster."""
    import torch  # pants: no-infer-dep

    if not isinstance(model, torch.nn.Sequential):
        return None
    steps: list[Callable[[np.ndarray], np.ndarray]] = []

    def linear(w: np.ndarray, b: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
        wt = np.ascontiguousarray(w.T)
        if b is None:
            return lambda x: x @ wt
        return lambda x: x @ wt + b

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
        return out

    def sigmoid(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
        return out

    def silu(x: np.ndarray) -> np.ndarray:
        return x * sigmoid(x)

    for m in model:
        if isinstance(m, torch.nn.Linear):
            w = m.weight.detach().cpu().numpy().astype(np.float32)
            b = None if m.bias is None else m.bias.detach().cpu().numpy().astype(np.float32)
            steps.append(linear(w, b))
        elif isinstance(m, torch.nn.ReLU):
            steps.append(lambda x: np.maximum(x, np.float32(0)))
        elif isinstance(m, torch.nn.Tanh):
            steps.append(np.tanh)
        elif isinstance(m, torch.nn.Sigmoid):
            steps.append(sigmoid)
        elif isinstance(m, torch.nn.SiLU):
            steps.append(silu)
        elif isinstance(m, torch.nn.Softmax) and m.dim in (-1, 1):
            steps.append(softmax)
        elif isinstance(m, torch.nn.Dropout):
            continue  # identity in eval mode
        else:
            return None

    def forward(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp overflow -> inf -> sigmoid 0, as in torch
            for f in steps:
                x = f(x)
        return x

    try:
        probe = torch.randn((5, n_in), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            want = model(probe).numpy()
        got = forward(probe.numpy())
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            return None
    except Exception:
        return None
    return forward


def _traced(model: Any, n_in: int, device: str) -> Any | None:
    """A frozen TorchScript trace of ``model``, or None when it cannot be traced or its
    answers differ from the eager model's on a random batch (then eager is kept)."""
    import warnings

    import torch  # pants: no-infer-dep

    try:
        # torch 2.13 marks jit deprecated; should it go, this returns None and eager is kept
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            example = torch.zeros((1, n_in), device=device)
            traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            probe = torch.randn((3, n_in), generator=torch.Generator().manual_seed(0)).to(device)
            if not torch.allclose(traced(probe), model(probe), rtol=1e-5, atol=1e-6):
                return None
        return traced
    except Exception:
        return None


def predictor_from_loaded(
    loaded: LoadedArtifact,
    *,
    version: str = "",
    builders: Mapping[str, Callable[..., Any]] | None = None,
    device: str = "auto",
    trace: bool | None = None,
) -> Predictor:
    """Build a Predictor from an already verified and deserialised artifact.

    ``trace``: run the model as a frozen TorchScript trace (less Python per forward pass,
    ~40% faster for a small MLP), checked against the eager model before use. None: only
    for built-in builders known to be trace-safe (no data-dependent control flow)."""
    m = loaded.manifest
    try:
        inputs = InputSchema(compile_fields(m.input_schema, role="input"))
        outputs = OutputSchema(compile_fields(m.output_schema, role="output"))
        dev = pick_device(device)
        model = loaded.build_model(resolve_builders(builders))
    except (ArtifactError, ConfigError) as e:
        raise ModelLoadError(f"cannot build model {m.name!r} ({loaded.digest[:19]}): {e}") from None
    except Exception as e:  # a builder's own failure: name it, never leak a traceback
        raise ModelLoadError(
            f"model builder {m.architecture.builder!r} failed for {m.name!r}: "
            f"{type(e).__name__}: {e}"
        ) from None
    if hasattr(model, "eval"):
        model.eval()
    if dev != "cpu" and hasattr(model, "to"):
        model = model.to(dev)
    if trace is None:
        trace = m.architecture.builder in TRACE_SAFE_BUILDERS and (
            not builders or m.architecture.builder not in builders
        )
    fast = None
    if trace and dev == "cpu":
        fast = _numpy_forward(model, len(inputs))
    if trace and fast is None:  # the NumPy path serves on CPU: no trace to build (~25 ms
        model = _traced(model, len(inputs), dev) or model  # of the GIL during a hot swap)
    p = Predictor(
        name=m.name,
        digest=loaded.digest,
        version=version or loaded.digest[7:19],
        manifest=m,
        inputs=inputs,
        outputs=outputs,
        model=model,
        device=dev,
        signer=loaded.signer,
        fast=fast,
        fast_of=model if fast is not None else None,
    )
    try:  # warm-up: the first forward allocates; a model that cannot run fails at load
        y = p.predict(np.zeros((1, len(inputs)), dtype=np.float32))
        outputs.decode(y)
    except ConfigError as e:
        raise ModelLoadError(f"model {m.name!r} does not fit its output schema: {e}") from None
    except Exception as e:
        raise ModelLoadError(
            f"model {m.name!r} fails on a {len(inputs)}-feature input: {type(e).__name__}: {e}"
        ) from None
    return p


def load_predictor(
    path: str | Path,
    policy: TrustPolicy,
    *,
    version: str = "",
    builders: Mapping[str, Callable[..., Any]] | None = None,
    device: str = "auto",
    threads: int | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    trace: bool | None = None,
) -> Predictor:
    """Verify ``path`` (archive or directory) with ``policy``, then deserialise and build.

    Raises ModelLoadError naming what failed: an untrusted/missing signature, a tampered
    file, a manifest the schema refuses, no builder for the architecture, weights that do
    not fit it.
    """
    if threads is not None:
        configure_torch_threads(threads)
    try:
        loaded = load_artifact(path, policy, framework="torch", runtime_config=runtime_config)
    except ArtifactError as e:
        raise ModelLoadError(f"refused artifact {path}: {type(e).__name__}: {e}") from None
    return predictor_from_loaded(
        loaded, version=version, builders=builders, device=device, trace=trace
    )
