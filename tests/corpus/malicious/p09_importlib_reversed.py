# expect: SL103 SL955 — importlib with a reversed string
import importlib

sp = importlib.import_module("ssecorpbus"[::-1])
sp.call("id", shell=True)
