"""Ships the repository's conf/ (the Hydra configs) inside the package, as ``cnnlab/conf``.

Every other setting is in pyproject.toml. This file only adds the one mapping pyproject.toml cannot
combine with package discovery, so that an installed cnnlab reads the same configs as a checkout
(``cnnlab.config.CONF_DIR``) without conf/ moving into src/.
"""

from setuptools import find_namespace_packages, find_packages, setup

# every folder of conf/ is a (data-only) package cnnlab.conf.<group>; "" gives each its *.yaml files;
# conf/local holds machine-specific overrides and stays behind
CONF = ["cnnlab.conf"] + [f"cnnlab.conf.{name}" for name in find_namespace_packages("conf", exclude=["local", "local.*"])]

setup(
    packages=find_packages("src") + CONF,
    package_dir={"": "src", "cnnlab.conf": "conf"},
    package_data={"": ["*.yaml"], "cnnlab": ["py.typed"]},
)
