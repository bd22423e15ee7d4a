"""Networks: HexPlane VAE (encoder, projection, decoders), padded rollout, DiT. Pure torch; no Ray, no optimizers."""
