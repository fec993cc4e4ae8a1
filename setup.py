"""Map the `kubetune` namespace package onto the role folders.

`kubetune.api`, `kubetune.operator` and `kubetune.devenv` live in operator/kubetune/,
`kubetune.workers` in workers/kubetune/. Neither operator/ nor workers/ has an
__init__.py, so neither is importable as a package of its own and `import operator`
always means the standard library's module.
"""

from setuptools import find_namespace_packages, setup

ROLE_FOLDERS = ("operator", "workers")

package_dir: dict[str, str] = {}
for folder in ROLE_FOLDERS:
    for package in find_namespace_packages(folder, include=["kubetune.*"], exclude=["*.__pycache__"]):
        package_dir[package] = f"{folder}/{package.replace('.', '/')}"

setup(packages=sorted(package_dir), package_dir=package_dir)
