"""Only here to declare the C extension; everything else lives in pyproject.toml."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fleetcloak.codecs._avlbatch",
            sources=["codecs/_avlbatch.c"],
            extra_compile_args=["-O3", "-std=c11"],
        )
    ]
)
