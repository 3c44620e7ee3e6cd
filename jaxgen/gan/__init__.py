"""Generative adversarial networks: losses, spectral normalisation and StyleGAN2 layers."""
