"""The density task (the trainer's, for model=cnf and planar): maximum likelihood on
2-D toy points, NLL in nats per point. Satisfies odenet.tasks.Task."""

from __future__ import annotations

from odenet.cnf.data import toy_loaders


class DensityTask:
    metric = "nll"
    full_test_size = None  # toy test sets have no fixed size: test_size is always written

    def loaders(self, cfg, device):
        return toy_loaders(cfg.data, cfg.seed, device, cfg.train.train_eval_size)

    def train_loss(self, model, batch):
        log_p = model(batch[0])
        return -log_p.mean(), {"nll": -log_p.detach().sum(), "count": len(log_p)}

    def eval_batch(self, model, batch):
        log_p = model(batch[0])
        return {"nll": -log_p.sum(), "count": len(log_p)}

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["nll"]) / n if n else None
