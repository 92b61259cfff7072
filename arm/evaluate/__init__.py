"""Evaluation: the world benchmarks (`arm.evaluate.world`) scored with the world's exact verifier."""
