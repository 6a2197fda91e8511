"""
Packaging for peatio-ws.

The twistd plugin lives in ``twisted/plugins/`` (a namespace Twisted extends
itself, so it has no ``__init__.py``) and is listed by hand. The default
configuration, ``etc/application.yml``, is copied into the package at build
time so that an installed daemon runs on its defaults from any directory.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithDefaults(build_py):
    """Ship etc/application.yml as peatio_ws/application.yml."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "peatio_ws" / "application.yml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / "etc" / "application.yml", target)


setup(
    name="peatio-ws",
    version="0.1.0",
    description="Private WebSocket streaming daemon for the Peatio exchange (Twisted + Autobahn)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=[*find_packages(include=["peatio_ws", "peatio_ws.*"]), "twisted.plugins"],
    package_data={"peatio_ws": ["py.typed"]},
    cmdclass={"build_py": BuildWithDefaults},
    install_requires=[
        "twisted[tls]>=24.7,<27",
        "autobahn>=25.12.1,<27",
        # 2.12 is the first to refuse tokens with unknown critical headers (crit,
        # RFC 7515 4.1.11); `make lowest` shows older ones accept them.
        "pyjwt[crypto]>=2.12,<3",
        # Unmaintained since 2018; peatio_ws.amqp patches it, so pin exactly.
        "txamqp==0.8.2",
        # 1.6 changed how connections are made; our code is written for it.
        "txredisapi>=1.6,<1.7",
        "pyyaml>=6,<7",
        # Prometheus exposition done right (escaping, histograms, content type).
        "prometheus_client>=0.20,<1",
        # Validating each event body is on the hot path; orjson's strict parser
        # is several times faster than json's and rejects NaN/Infinity itself.
        "orjson>=3.9.15,<4",  # before 3.9.15 its loads had no depth bound
    ],
    extras_require={
        "test": [
            "websockets>=13",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
            "types-PyYAML",
            "coverage>=7.4",
            # Only to test bench/charts.py (make bench's charts); not a dependency of the daemon.
            "matplotlib>=3.7",
        ],
    },
    entry_points={"console_scripts": ["peatio-ws = peatio_ws.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
