# expect: SL703 SL702 — walks the caller's frames to its globals
import sys

caller_globals = sys._getframe(1).f_back.f_globals
