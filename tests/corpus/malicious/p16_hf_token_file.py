# expect: SL801 — reads the cached Hub token file
import os

with open(os.path.expanduser("~/.cache/huggingface/token")) as f:
    stolen = f.read()
