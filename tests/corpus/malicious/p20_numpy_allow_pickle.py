# expect: SL503 — numpy.load with allow_pickle=True
import numpy as np

arr = np.load("x.npy", allow_pickle=True)
