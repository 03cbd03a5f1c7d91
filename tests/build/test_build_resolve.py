"""The libraries' resolve must never drag CUDA into CI (docs/pants.md, docs/gpu.md)."""

import json
from pathlib import Path

LOCK = Path("3rdparty/python/default.lock")


def _locked() -> dict[str, dict]:
    text = LOCK.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    data = json.loads(body)
    (resolve,) = data["locked_resolves"]
    return {r["project_name"]: r for r in resolve["locked_requirements"]}


def test_lock_has_no_cuda_packages() -> None:
    locked = _locked()
    cuda = sorted(n for n in locked if n.startswith(("nvidia-", "triton", "cuda")))
    assert cuda == [], f"CUDA packages in default.lock: {cuda}"


def test_torch_is_the_cpu_build_from_the_mapped_wheel_dir() -> None:
    torch = _locked()["torch"]
    assert torch["version"].endswith("+cpu")
    urls = [a["url"] for a in torch["artifacts"]]
    assert urls and all(u.startswith("file://${WHEELS_DIR}/") for u in urls), urls


def test_imported_torch_is_cpu_only() -> None:
    import torch

    assert torch.__version__.endswith("+cpu"), torch.__version__
    assert torch.version.cuda is None
