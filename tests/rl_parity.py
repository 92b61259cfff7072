"""One step of the `rl` stage from a rollout drawn once, for the data-parallel parity test in
tests/test_rl.py. `record` (one process) rolls out as the stage does and keeps the rollout in FOLDER;
`replay` (run with rl.strategy=ddp rl.devices=2: Lightning starts the second process by running this
module again) gives each process the rows of the recorded rollout for the prompts its data shard drew,
so both runs update from the same samples, and keeps what the process rolled out itself to compare.
Each process also keeps the gradients it steps with (FOLDER/grads-<rank>.pt).

    python -m tests.rl_parity replay FOLDER section.key=value ...      # from the repository root
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from unittest import mock

import torch


def run(mode: str, folder: str | Path, overrides: list[str]) -> dict | None:
    from arm.config import load_config
    from arm.rl.stage import rl_stage
    from arm.rl.train import GRPOModule

    folder = Path(folder)
    drawn = GRPOModule.rollout

    def record(self, prompts, step):
        roll = drawn(self, prompts, step)
        assert [p.index for p in roll.prompts] == list(range(len(roll.prompts)))
        (folder / "rollout.pkl").write_bytes(pickle.dumps(roll))
        return roll

    def replay(self, prompts, step):
        whole = pickle.loads((folder / "rollout.pkl").read_bytes())
        g, mine = self.settings.group_size, [p.index for p in prompts]
        assert [p.text for p in prompts] == [whole.prompts[k].text for k in mine], "not the one-process prompts"
        rows = [k * g + j for k in mine for j in range(g)]   # this process's samples of the whole rollout
        own = drawn(self, prompts, step)
        torch.save({"own": own.codes, "recorded": whole.codes[rows], "prompts": mine},
                   folder / f"rollout-{self.global_rank}.pt")
        return whole.groups(mine, g)

    def keep_gradients(self, optimizer):
        torch.save({name: p.grad.detach().clone() for name, p in self.model.named_parameters()},
                   folder / f"grads-{self.global_rank}.pt")

    folder.mkdir(parents=True, exist_ok=True)
    with mock.patch.object(GRPOModule, "rollout", {"record": record, "replay": replay}[mode]), \
            mock.patch.object(GRPOModule, "on_before_optimizer_step", keep_gradients):
        return rl_stage(load_config("configs/default.yaml", overrides))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3:])
