"""A run directory on disk: the typed record every run writes and every report reads
(record.py), the one atomic way to write a file (files.py), and the directory's owner and
history (directory.py). No torch: reports read runs through this package alone."""
