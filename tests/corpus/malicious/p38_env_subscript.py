# expect: SL802 — indexed read of a secret variable
import os

password = os.environ["DB_PASSWORD"]
