# expect: SL704 — heap walk with gc
import gc

objs = gc.get_objects()
