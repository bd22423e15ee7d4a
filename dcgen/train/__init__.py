"""Training: checkpoint format, EMA, plain-torch loops (VAE, DiT, feature networks) and the Ray Train layer."""
