"""Diffusion and GAN pipelines for Hugging Face diffusers."""
