"""What a person looks at while the unified model trains: every few hundred steps, TensorBoard gets a
grid of images generated for fixed validation prompts, a grid of fixed sources above their edits, a
table of fixed questions with the model's answers, and the world scores of those samples
(`world/gen_acc`, `world/edit_g_o`, `world/und_acc`): a verifier-checked curve beside the loss. Samples
are drawn with the sampling the model will be saved with (the config's `sampling` section).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from arm.evaluate.report import write_tensorboard


class WorldSamples(L.Callback):
    def __init__(self, prepare_dir: str | Path, tokenizer_dir: str | Path, info, text_tokenizer, sampling,
                 every_n_steps: int, records_per_task: int = 16, split: str = "val"):
        self.prepare_dir, self.tokenizer_dir, self.split = Path(prepare_dir), Path(tokenizer_dir), split
        self.info, self.text_tokenizer, self.sampling = info, text_tokenizer, sampling
        self.every, self.limit = every_n_steps, records_per_task
        self._data = self._visual = None

    def _pipeline(self, module):
        from arm.evaluate.samples import SplitData
        from arm.pipeline import Pipeline
        from arm.tokenizer.model import VisualTokenizer

        if self._data is None:
            self._data = SplitData(self.prepare_dir, self.split)
            self._visual = VisualTokenizer.load(self.tokenizer_dir)
        return Pipeline(module.model, self.info, self.text_tokenizer, self._visual.to(module.device), self.sampling)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        # Every process runs the samples (a sharded model needs all of them for a forward); rank 0 writes.
        if self.every <= 0 or step % self.every or step == 0:
            return
        if getattr(self, "_last", None) == step:  # once per optimiser step under gradient accumulation
            return
        self._last = step
        self.log_samples(trainer, module, step)

    def log_samples(self, trainer, module, step: int) -> dict:
        from arm.evaluate.samples import EvalSettings, Samples
        from arm.evaluate.world import evaluate_all

        was_training = module.training
        pipe = self._pipeline(module)
        settings, samples = EvalSettings(limit=self.limit, seed=0), Samples()
        metrics = evaluate_all(pipe, self._data, settings, samples)     # a user's data: grids, answers' scores
        module.train(was_training)
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return metrics
        for key, name in (("gen/acc", "world/gen_acc"), ("edit/g_o", "world/edit_g_o"), ("und/acc", "world/und_acc"),
                          ("und/exact_match", "samples/und_exact_match"), ("edit/target_psnr", "samples/edit_target_psnr")):
            if key in metrics:
                writer.add_scalar(name, metrics[key], step)
        write_tensorboard(writer, samples, step)
        return metrics
