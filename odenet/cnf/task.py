"""The density task (the trainer's, for model=cnf and planar): maximum likelihood on
2-D toy points, NLL in nats per point. Satisfies odenet.training.tasks.Task."""

from __future__ import annotations

from types import SimpleNamespace

from odenet.cnf.data import split_points, toy_loaders
from odenet.data import Batches


class DensityTask:
    metric = "nll"
    full_test_size = None  # toy test sets have no fixed size: test_size is always written

    def loaders(self, cfg, device):
        return toy_loaders(cfg.data, cfg.seed, device, cfg.train.train_eval_size)

    def loss(self, out, batch):
        return -out.mean()  # out: log p of each point

    def sums(self, out, batch):
        return {"nll": -out.sum(), "count": len(out)}

    def train_loss(self, model, batch):
        log_p = model(batch[0])
        return self.loss(log_p, batch), self.sums(log_p.detach(), batch)

    def eval_batch(self, model, batch):
        return self.sums(model(batch[0]), batch)

    def probe_batches(self, config, *, train, n, batch_size, device, root=None):
        # the run's own points, sampled whole then cut: a shorter draw gives other points
        data = SimpleNamespace(**config["data"])  # a checkpoint's config: plain dicts
        pts = split_points(data, config.get("seed", 0), train)[:n]
        return list(Batches((pts,), batch_size, device=device, on_device=True))

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["nll"]) / n if n else None
