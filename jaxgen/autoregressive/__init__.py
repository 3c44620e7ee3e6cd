"""The autoregressive family: PixelCNN, gated PixelCNN, PixelCNN++ and an ImageGPT-style transformer."""
