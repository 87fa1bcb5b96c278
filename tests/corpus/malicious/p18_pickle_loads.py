# expect: SL505 SL501 — pickle.loads of downloaded bytes
import pickle

obj = pickle.loads(b"cos\nsystem\n(S'id'\ntR.")
