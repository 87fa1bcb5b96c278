"""Sandbox check for a GPU machine: layers, set-up cost, and sandboxed vs unsandboxed UNet step time on CUDA.

Self-contained (builds its own tiny model) and about a minute long::

    python bench/gpu_check.py            # prints JSON lines; the last one is the summary

Goal from issue 4: the sandboxed step time is at least 98% of the unsandboxed one (speed ratio ≥ 0.98).
Extra import paths (wheels unpacked outside site-packages) are taken from ``$PYTHONPATH`` and granted read-only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safeloader._demo.tiny_model import build_tiny_model  # noqa: E402
from safeloader.policy.schema import SandboxPolicy  # noqa: E402
from safeloader.sandbox import probe_host, spawn_worker  # noqa: E402

#: Loads the UNet on CUDA and times batched forward passes; the model path is argv[1] or arrives on fd 3.
STEP_SNIPPET = r"""
import json, socket, sys, time
path = sys.argv[1] if sys.argv[1] != "-" else socket.socket(fileno=3).recv(4096).decode()
import torch
from diffusers import UNet2DModel
unet = UNet2DModel.from_pretrained(path, subfolder="unet").to("cuda").eval()
x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to("cuda")
with torch.no_grad():
    for _ in range(20):
        unet(x, 10)
    torch.cuda.synchronize()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(50):
            unet(x, 10)
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - start) / 50)
    checksum = float(unet(x, 10).sample.double().sum())
print("RESULT " + json.dumps({"step_ms": min(rounds) * 1e3, "checksum": checksum}), flush=True)
"""


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def extra_paths() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]


def policy_for(report_active: set[str], **overrides: object) -> SandboxPolicy:
    base = SandboxPolicy(require=tuple(sorted(report_active)), read_paths=(str(ROOT), *extra_paths()))
    return SandboxPolicy(**{**base.__dict__, **overrides})


def setup_cost(policy: SandboxPolicy, repeats: int = 10) -> dict[str, float]:
    """Median ms from start to the program's first line, plain ``python -c`` vs the sandbox."""
    plain, boxed = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-s", "-c", "import os; os.write(1, b'x')"], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.read(1) == b"x"
        plain.append(time.perf_counter() - start)
        proc.wait()
        start = time.perf_counter()
        worker = spawn_worker(policy, argv=["-c", "import os; os.write(3, b'x')"])
        assert worker.sock.recv(1) == b"x"
        boxed.append(time.perf_counter() - start)
        worker.close()
    return {"plain_ms": statistics.median(plain) * 1e3, "sandboxed_ms": statistics.median(boxed) * 1e3}


def unsandboxed_step(model: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", STEP_SNIPPET, str(model)], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return json.loads(out.split("RESULT ", 1)[1])


def sandboxed_step(model: Path, policy: SandboxPolicy) -> dict[str, float]:
    env = {"PYTHONPATH": ":".join([str(ROOT), *extra_paths()])}
    worker = spawn_worker(policy, model_dir=model, argv=["-c", STEP_SNIPPET, "-"], env_extra=env)
    try:
        worker.sock.sendall(str(worker.model_dir).encode())
        code = worker.wait(300)
        tail = worker.stderr_tail(40)
        if code != 0 or "RESULT " not in tail:
            raise RuntimeError(f"sandboxed run failed (exit {code}):\n{tail}")
        emit(sandbox_report=worker.report.to_dict())
        return json.loads(tail.split("RESULT ", 1)[1].splitlines()[0])
    finally:
        worker.close()


def main() -> int:
    report = probe_host()
    emit(host_layers={s.layer: (s.active, s.detail) for s in report.layers})
    active = {s.layer for s in report.layers if s.active}
    emit(setup=setup_cost(policy_for(active)))
    import torch

    if not torch.cuda.is_available():
        emit(cuda="not available: skipped the step-time comparison")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "ddpm", sample_size=64)
        os.chmod(tmp, 0o755)
        plain = unsandboxed_step(model)
        boxed = sandboxed_step(model, policy_for(active, gpu=True, memory_limit_mb=65536))
        plain_again = unsandboxed_step(model)
    best_plain = min(plain["step_ms"], plain_again["step_ms"])
    emit(
        device=torch.cuda.get_device_name(0),
        unsandboxed_step_ms=[plain["step_ms"], plain_again["step_ms"]],
        sandboxed_step_ms=boxed["step_ms"],
        speed_ratio=best_plain / boxed["step_ms"],
        same_checksum=plain["checksum"] == boxed["checksum"],
        goal="speed_ratio >= 0.98",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
