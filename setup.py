"""Only here to declare the C extensions; everything else lives in pyproject.toml."""
from setuptools import Extension, setup


def c_extension(name: str, source: str) -> Extension:
    return Extension(name, sources=[source], extra_compile_args=["-O3", "-std=c11"])


setup(
    ext_modules=[
        c_extension("fleetcloak.codecs._avlbatch", "codecs/_avlbatch.c"),        # decode_batch's parser
        c_extension("fleetcloak.anonymize._recordid", "anonymize/_recordid.c"),  # keyed BLAKE2b record ids
        c_extension("fleetcloak.anonymize._render", "anonymize/_render.c"),      # output records as JSON bytes
        c_extension("fleetcloak.streams._recordbatch", "streams/_recordbatch.c"),  # Kafka RecordBatch v2 buffers
        c_extension("fleetcloak.streams._idwindow", "streams/_idwindow.c"),      # the duplicate window of record ids
    ]
)
