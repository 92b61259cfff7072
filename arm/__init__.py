"""arm: unified autoregressive multimodal model."""
