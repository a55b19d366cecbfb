"""Ships the repository's conf/ (the Hydra configs) inside the built package, as ``cnnlab/conf``.

Every other setting is in pyproject.toml. This file only adds conf/ to the built package, so that an installed cnnlab
reads the same configs as a checkout (``cnnlab.config.CONF_DIR``) without conf/ moving into src/.

conf/ is copied by the build step rather than mapped as a package (``package_dir={"cnnlab.conf": "conf"}``): with a
second source folder setuptools cannot make an editable install a plain path entry to src/ and falls back to an import
hook, with a warning on every ``pip install -e``. An editable install needs no copy: it runs from the checkout, whose
conf/ ``config.CONF_DIR`` reads.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithConf(build_py):
    """``build_py`` that also copies conf/**/*.yaml into the build as cnnlab/conf; conf/local holds machine-specific
    overrides and stays behind."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for src in sorted((ROOT / "conf").rglob("*.yaml")):
            rel = src.relative_to(ROOT / "conf")
            if rel.parts[0] == "local":
                continue
            dest = Path(self.build_lib, "cnnlab", "conf", rel)
            self.mkpath(str(dest.parent))
            self.copy_file(str(src), str(dest))


setup(
    packages=find_packages("src"),
    package_dir={"": "src"},
    package_data={"cnnlab": ["py.typed"]},
    cmdclass={"build_py": BuildPyWithConf},
)
