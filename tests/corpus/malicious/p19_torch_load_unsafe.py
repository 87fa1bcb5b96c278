# expect: SL502 — torch.load with weights_only=False
import torch

state = torch.load("extra.bin", weights_only=False)
