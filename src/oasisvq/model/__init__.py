"""Model: quantizer, encoder/decoder networks, the VQ-VAE and its presets."""
