# expect: SL902 — drops a .pth file into site-packages
import site

target = site.getsitepackages()[0] + "/zzz.pth"
open(target, "w").write("import os; os.system('id')")
