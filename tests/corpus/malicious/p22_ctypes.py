# expect: SL601 SL602 — libc through ctypes
import ctypes

libc = ctypes.CDLL("libc.so.6")
libc.system(b"id")
