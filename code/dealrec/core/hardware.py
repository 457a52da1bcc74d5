"""What this machine can do, detected at run time (never assumed): the CPU's name and flags,
native bf16 and int8 matrix support, a one-line description for benchmark output, and the
device a ``--gpu_id`` resolves to."""

from __future__ import annotations

import functools
import os
import platform

import torch

from dealrec.core.logs import LOG

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AMD Zen 4+, Intel Cooper Lake+, SPR+)
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: name from platform, no flags (bf16 then counts as not native)
        pass
    return name, frozenset(flags)


def cpu_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    return _cpuinfo()[1]


def native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (else torch emulates it, slower than fp32).
    ``DEALREC_NATIVE_BF16=0|1`` overrides the detection (for tests and odd virtual machines)."""
    env = os.environ.get("DEALREC_NATIVE_BF16")
    if env in ("0", "1"):
        return env == "1"
    return any(f in cpu_flags() for f in BF16_FLAGS)


def native_int8() -> bool:
    return any(f in cpu_flags() for f in INT8_FLAGS)


def describe() -> str:
    """One line naming the machine, for every published figure."""
    flags = [f for f in (*BF16_FLAGS, *INT8_FLAGS) if f in cpu_flags()]
    return (f"{cpu_name()} ({os.cpu_count()} cores; {' '.join(flags) or 'no bf16/vnni flags'}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")


class PrecisionError(ValueError):
    """A precision that this machine cannot run as asked; the message says what to do."""


def cpu_precision(requested: str, device: torch.device | str, flag: str, auto: str = "fp32",
                  warn: bool = True, force: str | None = None) -> str:
    """The precision a CPU stage runs in: ``fp32`` or ``bf16`` (bf16 only on a CPU that multiplies
    it natively). ``auto`` runs the stage's measured choice (``auto=``), bf16 only where native.
    bf16 asked where it is not native warns (``warn``) and runs fp32, or, with ``force`` (the flag
    that forces it), raises :class:`PrecisionError`; on a GPU the model's own dtype is kept
    (``fp32`` returned: no CPU-side cast)."""
    import logging
    import warnings

    if requested not in ("fp32", "bf16", "auto"):
        raise ValueError(f"{flag} must be one of fp32, bf16, auto; got {requested!r}")
    if torch.device(device).type != "cpu":
        return "fp32"
    want = auto if requested == "auto" else requested
    if want == "bf16" and not native_bf16():
        msg = (f"{flag} bf16: this CPU ({cpu_name()}) has no native bf16 (no avx512_bf16/amx_bf16 flag), "
               "where bf16 is emulated and slower")
        if requested == "bf16" and force:
            raise PrecisionError(f"{msg}; drop {force} to fall back to fp32")
        if requested == "bf16" and warn:
            warnings.warn(f"{msg}; using fp32", stacklevel=2)
            logging.getLogger("dealrec").warning("%s; using fp32", msg)
        return "fp32"
    return want


def resolve_device(gpu_id: str | int | None) -> torch.device:
    """``cpu``, ``None``, or a GPU index; an absent GPU gives a warning and the CPU."""
    if gpu_id is None or str(gpu_id).lower() in {"cpu", "-1", ""}:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        LOG.warning("GPU %s requested but CUDA is not available: using the CPU", gpu_id)
        return torch.device("cpu")
    idx = int(gpu_id)
    if idx >= torch.cuda.device_count():
        LOG.warning("GPU %s requested but only %d visible: using cuda:0", gpu_id, torch.cuda.device_count())
        idx = 0
    return torch.device(f"cuda:{idx}")
