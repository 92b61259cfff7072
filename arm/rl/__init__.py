"""RL preference optimisation of the unified model (GRPO over image-token spans)."""
