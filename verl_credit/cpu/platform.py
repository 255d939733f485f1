"""verl's platform interface for the CPU: ``VERL_PLATFORM=cpu`` (registered as ``cpu``).

verl 0.9.1 ships platforms for CUDA, ROCm and Ascend only; every device call in verl goes through
``verl.plugin.platform.get_platform()``. This platform answers them for a machine without an
accelerator, so verl's own workers, FSDP2 engine and checkpointing run on the CPU with gloo:

    device_name            "cpu"          (tensors and device meshes on the CPU)
    communication backend  "gloo"
    device_module          :data:`CPU_DEVICE`: the ``torch.cuda`` calls verl makes (memory,
                           streams, events, seeds, synchronize), as no-ops or CPU equivalents
    ray resource           "GPU"          verl's resource pools insist on GPUs: start Ray with
                           logical GPUs (``ray_kwargs.ray_init.num_gpus``), one per worker

It is never auto-detected (``is_platform_available`` is False): only ``VERL_PLATFORM=cpu`` selects
it, so installing verl_credit changes nothing on a GPU machine. A correctness check, not a way to
train: see :mod:`verl_credit.cpu`.
"""

from __future__ import annotations

import contextlib
import types

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

__all__ = ["CPUPlatform", "CPU_DEVICE", "PLATFORM_NAME"]

PLATFORM_NAME = "cpu"


class _Stream:
    """A stream that runs everything at once (CPU kernels are synchronous)."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or _Event()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


def _zero(*args, **kwargs) -> int:
    return 0


def _none(*args, **kwargs) -> None:
    return None


def _mem_get_info(*args, **kwargs) -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


# What verl calls on ``get_torch_device()`` (read in verl 0.9.1), answered for the CPU.
CPU_DEVICE = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: "cpu",
    set_device=_none,
    synchronize=_none,
    empty_cache=_none,
    ipc_collect=_none,
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_rng_state=lambda *a, **k: torch.get_rng_state(),
    set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    reset_peak_memory_stats=_none,
    mem_get_info=_mem_get_info,
    set_per_process_memory_fraction=_none,
    get_device_name=lambda *a, **k: "cpu",
    Stream=_Stream,
    Event=_Event,
    stream=lambda s=None: contextlib.nullcontext(),
    current_stream=lambda *a, **k: _Stream(),
    default_stream=lambda *a, **k: _Stream(),
    is_bf16_supported=lambda *a, **k: True,
)


@PlatformRegistry.register(platform=PLATFORM_NAME)
class CPUPlatform(PlatformBase):
    """verl on the CPU: gloo, no device memory, logical Ray GPUs (see the module docstring)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return CPU_DEVICE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return False  # never auto-detected: VERL_PLATFORM=cpu selects it

    def current_device(self) -> str:
        # verl passes this straight to ``.to(...)`` / ``device=`` (``get_device_id()``): an int would
        # mean an accelerator index, so answer the CPU device itself
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its logical GPUs; nothing reads it on the CPU

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


def limit_threads() -> None:
    """One torch thread per process unless ``VERL_CREDIT_CPU_THREADS`` says otherwise: a CPU run has
    several worker processes sharing a few cores, and oversubscribed BLAS threads slow all of them."""
    import os

    torch.set_num_threads(max(1, int(os.environ.get("VERL_CREDIT_CPU_THREADS", "1"))))


def _gloo_only(init_process_group):
    """verl builds the backend ``"cpu:gloo,<device>:<backend>"``, i.e. ``"cpu:gloo,cpu:gloo"`` here,
    which torch rejects (one backend per device type): create the group with plain ``gloo``."""

    def wrapper(*args, **kwargs):
        backend = kwargs.get("backend", args[0] if args else None)
        if isinstance(backend, str) and backend.replace(" ", "") == "cpu:gloo,cpu:gloo":
            if args:
                args = ("gloo", *args[1:])
            else:
                kwargs["backend"] = "gloo"
        return init_process_group(*args, **kwargs)

    wrapper.verl_credit_gloo_only = True
    return wrapper


def install_gloo_backend() -> None:
    """Wrap ``torch.distributed.init_process_group`` once (see :func:`_gloo_only`)."""
    import torch.distributed as dist

    if not getattr(dist.init_process_group, "verl_credit_gloo_only", False):
        dist.init_process_group = _gloo_only(dist.init_process_group)
