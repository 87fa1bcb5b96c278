# expect: SL705 SL955 — eval fetched from the builtins module by a built name
import builtins

getattr(builtins, "ev" + "al")("1+1")
