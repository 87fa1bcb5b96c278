# expect: SL404 — builds a code object by hand
import types


def f():
    pass


g = types.FunctionType(f.__code__.replace(co_consts=(None,)), {})
