"""Serving SED on NVIDIA Triton through PyTriton: the service, its Triton binding and a client.

``service`` has no Triton dependency (unit-testable); ``triton`` binds it to a real Triton
server (``sed-trt serve``); ``client`` talks to it with tritonclient (``sed-trt client``).
"""
