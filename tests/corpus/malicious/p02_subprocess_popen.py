# expect: SL201 SL202 — subprocess.Popen
import subprocess

subprocess.Popen(["/bin/sh", "-c", "id"])
