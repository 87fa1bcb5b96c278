# expect: SL701 — reaching builtins through __globals__
def f():
    pass


b = f.__globals__["__builtins__"]
