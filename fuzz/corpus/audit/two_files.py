from .helpers import x
x()

#--helpers--
import os
os.system("id")
