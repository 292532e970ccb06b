"""The feeder's one C extension (optional: without a compiler the feeder runs on its Python path).

Everything else about the package is in pyproject.toml; setuptools reads both.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "feeder.exchanges._units",
            sources=["feeder/exchanges/_units.c"],
            optional=True,  # a failed build is a warning: feeder.exchanges.units_json then reports it missing
            extra_compile_args=["-O2"],
        )
    ]
)
