# expect: SL802 — AWS secret via os.getenv
from os import getenv

key = getenv("AWS_SECRET_ACCESS_KEY")
