"""Which packages the distribution holds: found, not listed by hand (metadata is in pyproject.toml).

The repository keeps the design card's top-level folders, and each installs under the `worldsim`
namespace so that installing worldsim never shadows another distribution's `tokenizers` or
`client`; every package below those folders is found and installed with them.
"""

from setuptools import find_packages, setup

ROOTS = {  # import name -> folder
    "worldsim": "worldsim",
    "worldsim.tokenizers": "tokenizers",
    "worldsim.inference": "inference",
    "worldsim.client": "client",
}

packages = [sub for name, folder in ROOTS.items()
            for sub in [name, *(f"{name}.{p}" for p in find_packages(folder))]]
setup(package_dir=ROOTS, packages=packages)
