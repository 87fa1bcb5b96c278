"""A benign custom pipeline: DDPM sampling with a caller-supplied generator (deterministic)."""

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .sampling import denoise


class SeededDDPMPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 2, output_type: str = "np"):
        size = self.unet.config.sample_size
        image = torch.randn((batch_size, self.unet.config.in_channels, size, size), generator=generator)
        image = denoise(self.unet, self.scheduler, image, num_inference_steps, generator, self.progress_bar)
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image)
