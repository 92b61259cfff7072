"""The unified autoregressive model (ARM's second pillar): one next-token model over text and image ids."""
