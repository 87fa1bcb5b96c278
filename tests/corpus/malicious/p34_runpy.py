# expect: SL403 SL401 — runs another file as __main__
import runpy

runpy.run_path("/tmp/stage2.py")
