"""SL6xx: native code loaded into the process (foreign function interfaces, shared libraries)."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "native"

RULES = (
    Rule("SL601", "ffi-module", "critical", 676, "imports {detail}, which calls native code directly", FAMILY),
    Rule("SL602", "native-library-load", "high", 676, "loads a native library through {detail}", FAMILY),
)

_FFI_MODULES = ("ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_xxsubinterpreters", "mmap")

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules=dict.fromkeys(_FFI_MODULES, "SL601"),
    references={
        "torch.ops.load_library": "SL602",
        "torch.classes.load_library": "SL602",
        "torch.utils.cpp_extension.load": "SL602",
        "torch.utils.cpp_extension.load_inline": "SL602",
        "os.add_dll_directory": "SL602",
        "sys.setdlopenflags": "SL602",
    },
    reference_prefixes=dict.fromkeys(_FFI_MODULES, "SL602"),
)
