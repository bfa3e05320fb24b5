"""Train the embedded shapes models from scratch: `python -m training --out models`.

Three stages, each with fixed seeds and step counts so a run is reproducible: a small VAE, a
small CLIP (ranking), then the UNet with its text encoder on the VAE's latents. Sized to finish
on 2 CPU cores well inside an hour; a GPU is used when present.
"""
