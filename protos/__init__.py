"""The wire contracts (.proto files) and the Python code generated from them by the build.

Generated modules (``*_pb2.py``, ``*_pb2_grpc.py``) are not committed: ``python -m m2grl.protos_build``
(run by ``make``) writes them next to the .proto files.
"""
