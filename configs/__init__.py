# Makes configs/ importable as `odenet.configs` so Hydra finds it via pkg://odenet.configs.
