# expect: SL801 — reads the user's SSH private key
from pathlib import Path

key = (Path.home() / ".ssh" / "id_rsa").read_text()
