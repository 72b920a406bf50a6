"""Building and loading the C kernels (``csrc/``) for one vector instruction set.

Each instruction set is a separate build with its own vector width and register
blocking (``csrc/simd.h``): ``avx512`` (16 lanes, 32 registers), ``avx2``
(8 lanes, 16 registers), ``sse`` (4 lanes; the same code as NEON) and
``neon`` (4 lanes, aarch64, untested on hardware). By default the widest one
this processor runs is used; the environment variable ``LENET_SWEEP_ISA``
(``avx512``, ``avx2``, ``sse``, ``neon``) forces one, e.g. to measure the AVX2
build on an AVX-512 machine.

A build uses the system's C compiler (``$CC``, else ``cc``) and is cached under
``$XDG_CACHE_HOME/lenet-sweep`` (default ``~/.cache/lenet-sweep``), keyed by the
sources, the compiler, the processor and the instruction set, so a shared home
across different machines keeps one build per kind. Anything that prevents the
kernels from running here raises ``Unavailable`` with a one-line reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ISA_VARIABLE = "LENET_SWEEP_ISA"
CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / "conv1_block.c", CSRC / "conv2_block.c"]
HEADERS = [CSRC / "simd.h"]
COMMON_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp"]
_P = ctypes.c_void_p
_X86 = ("x86_64", "amd64")
_ARM = ("aarch64", "arm64")


class Unavailable(RuntimeError):
    """The kernels cannot run here; the message says why in one line."""


@dataclass(frozen=True)
class Isa:
    """A vector instruction set the kernels are built for."""

    name: str
    machines: tuple[str, ...]  # platform.machine() values, lower case
    cpu_flags: frozenset[str]  # what /proc/cpuinfo must list
    flags: tuple[str, ...]  # the compiler's target flags


ISAS = (
    Isa(
        "avx512",
        _X86,
        frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma"}),
        ("-march=x86-64-v4",),
    ),
    Isa("avx2", _X86, frozenset({"avx2", "fma", "bmi2", "f16c", "movbe"}), ("-march=x86-64-v3",)),
    Isa("sse", _X86, frozenset({"sse4_2", "ssse3", "popcnt"}), ("-march=x86-64-v2",)),
    Isa("neon", _ARM, frozenset(), ("-march=armv8-a",)),
)


@dataclass(frozen=True)
class Library:
    """The loaded kernels of one instruction set."""

    isa: str
    lanes: int  # the vector width the build chose
    path: Path
    cdll: ctypes.CDLL

    @property
    def label(self) -> str:
        """How runs and benchmarks name this path, e.g. ``fused-avx2``."""
        return f"fused-{self.isa}"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet-sweep"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The processor's model name, or the machine type where the system does not say."""
    for line in _cpuinfo_lines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _processor() -> str:
    """What a build depends on besides its flags: the CPU's model and feature flags."""
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(sorted({line for line in _cpuinfo_lines() if line.startswith(wanted)}))


def _cpu_flags() -> set[str]:
    for line in _cpuinfo_lines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def supported_isas() -> list[Isa]:
    """The instruction sets this processor runs, widest first."""
    machine, flags = platform.machine().lower(), _cpu_flags()
    return [isa for isa in ISAS if machine in isa.machines and isa.cpu_flags <= flags]


def requested_isa() -> Isa:
    """``$LENET_SWEEP_ISA`` if set, else the widest instruction set this processor runs."""
    supported = supported_isas()
    name = os.environ.get(ISA_VARIABLE, "").strip().lower()
    if not name:
        if not supported:
            raise Unavailable(f"no kernel build for this processor ({platform.machine()})")
        return supported[0]
    known = {isa.name: isa for isa in ISAS}
    if name not in known:
        raise Unavailable(f"{ISA_VARIABLE}={name}: unknown; choose from {', '.join(known)}")
    if known[name] not in supported:
        raise Unavailable(f"{ISA_VARIABLE}={name}: this processor ({cpu_model()}) does not run it")
    return known[name]


def _first_error(compiler_output: str) -> str:
    """The compiler's first ``error:`` line (its last line where none says so): what failed, in one line."""
    lines = [line.strip() for line in compiler_output.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[-1] if lines else "no output")


def _build(compiler: str, isa: Isa) -> Path:
    """The compiled kernels' library, built once per source, compiler, processor and instruction set.

    A failed build raises ``RuntimeError`` with the compiler's first error and leaves its whole
    output in ``<target>.log`` beside where the library would be; nothing of it is cached, so
    the next process tries again (after a compiler update, say).
    """
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [path.read_text() for path in SOURCES + HEADERS]
    flags = [*COMMON_FLAGS, *isa.flags]
    key = hashlib.sha256("\0".join([*texts, compiler, version, _processor(), *flags]).encode())
    target = cache_dir() / f"lenet_blocks-{isa.name}-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: parallel jobs never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *flags, "-o", str(built), *map(str, SOURCES)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            log = target.with_suffix(".log")
            log.write_text(" ".join(command) + "\n" + result.stdout + result.stderr)
            raise RuntimeError(f"{_first_error(result.stderr or result.stdout)} (whole log: {log})")
        os.replace(built, target)
    return target


# This process's builds: loaded libraries, and why a build failed (a message, tried again by the next process).
_loaded: dict[str, Library] = {}
_failed: dict[str, str] = {}


def _load(isa: Isa) -> Library:
    if isa.name in _loaded:
        return _loaded[isa.name]
    if isa.name in _failed:
        raise Unavailable(_failed[isa.name])
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise Unavailable(f"no C compiler ({compiler}) to build LeNet-5's block kernels")
    try:
        path = _build(compiler, isa)
        cdll = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
        _failed[isa.name] = f"could not build LeNet-5's block kernels ({CSRC}) for {isa.name} with {compiler}: {error}"
        raise Unavailable(_failed[isa.name]) from None
    cdll.conv1_forward.argtypes = [_P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    cdll.conv1_backward.argtypes = [_P, _P, _P, _P, ctypes.c_int64, _P, _P, ctypes.c_int]
    cdll.conv2_forward.argtypes = [_P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    cdll.conv2_backward.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int64, _P, _P, _P, ctypes.c_int]
    _loaded[isa.name] = Library(isa.name, cdll.lenet_lanes(), path, cdll)
    return _loaded[isa.name]


def load(isa: Isa) -> Library:
    """The kernels built for ``isa`` (built or loaded once per process); raises ``Unavailable``."""
    return _load(isa)


def library() -> Library:
    """The kernels for ``requested_isa()``; raises ``Unavailable``."""
    return load(requested_isa())
