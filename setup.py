"""sesbeam: Apache Beam pipelines for Amazon SES inbound-email verdict analytics.

This file is also the worker package definition for Dataflow (``--setup_file ./setup.py``).
"""

from setuptools import find_packages, setup

setup(
    name="sesbeam",
    version="0.1.0",
    description="Analytics over Amazon SES inbound-email notifications with Apache Beam and Arrow",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["sesbeam", "sesbeam.*"]),
    install_requires=[
        "apache-beam[aws]>=2.60,<3",
        "pyarrow>=16,<27",
        "orjson>=3.9,<4",
        "isal>=1.6,<2",  # ISA-L gunzip, about twice zlib's speed
        "msgspec>=0.18,<1",  # typed decoding of receipt notifications
        "numpy>=1.24,<3",
        "cryptography>=39,<60",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "hypothesis>=6.100,<7",
            "moto[server]>=5.0,<6",
            "boto3>=1.34,<2",
            "duckdb>=2.0,<3",
            "polars>=2.1,<3",
            # DataflowRunner --dry_run translation test (offline).
            "apache-beam[aws,gcp]>=2.60,<3",
        ],
        # benchmarks/run.py: the engines sesbeam is compared with, pinned.
        "bench": [
            "duckdb==2.0.0",
            "polars==2.1.0",
        ],
    },
    entry_points={"console_scripts": ["sesbeam=sesbeam.pipeline.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Communications :: Email",
    ],
)
