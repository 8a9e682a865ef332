"""Only computes the package list: metadata and dependencies live in setup.cfg.

`configs/` stays at the top level (the single source of defaults) and ships inside the
package as `odenet.configs` (package_dir in setup.cfg), so Hydra finds it through
`pkg://odenet.configs` after both `pip install -e .` and `pip install .`. setup.cfg's
`packages = find:` cannot add a package that lives outside odenet/, hence this file.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["odenet", "odenet.*"]) + ["odenet.configs"])
