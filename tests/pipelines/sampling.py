"""Helper module of seeded_ddpm.py, imported relatively: it runs too, so it is resolved and audited too."""


def denoise(unet, scheduler, image, num_inference_steps, generator, progress_bar):
    scheduler.set_timesteps(num_inference_steps)
    for t in progress_bar(scheduler.timesteps):
        model_output = unet(image, t).sample
        image = scheduler.step(model_output, t, image, generator=generator).prev_sample
    return image
