"""The Shapes world: the project's embedded synthetic dataset and benchmark.

Small images (64 x 64 by default) of one to three coloured shapes on a 3 x 3 grid, each image paired with
its exact scene graph, so that understanding, generation and editing are scored by a program (the
verifier) instead of a judge model. The full specification is docs/world.md.

Modules (import them directly; this package imports nothing itself):

- `arm.world.scene`: the vocabulary (palette, shapes, sizes, grid positions, held-out pairs, knowledge
  table), scene graphs and seeded sampling.
- `arm.world.render`: scene graph -> pixels (Pillow, no anti-aliasing).
- `arm.world.texts`: captions, generation prompts and their constraints, edits, questions, knowledge QA.
- `arm.world.dataset`: writes the splits as PNG images and a JSON Lines manifest (`arm world generate`).
- `arm.world.verifier`: image -> scene graph, the instrument behind every score.
- `arm.world.scores`: every world score (generation, image quality, editing, understanding).
"""
