# expect: SL904 — replaces a module for every later import
import sys

sys.modules["safetensors"] = object()
