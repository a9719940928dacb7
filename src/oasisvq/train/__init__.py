"""Train: the one training engine (shared by VQ-VAE and priors), checkpoints, history."""
