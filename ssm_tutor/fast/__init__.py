"""The fast layer: the same computations as the teaching modules, arranged for speed on a CPU.

Nothing here is new mathematics. Every function is held to its teaching-layer twin by the tests
(values, gradients, generated tokens), never the other way round, and the models pick it by
default with a switch back to the readable path (``MambaLM(config, fast=False)`` or
``model.use_fast_path(False)``).

* :mod:`ssm_tutor.fast.layout` -- memory layouts of weights: ``store_input_major_``;
* :mod:`ssm_tutor.fast.mixer`  -- the Mamba mixer's forward pass, time-major, with a channels-last
  convolution and stage 5's fused scan (``ssm_tutor.scan.selective_scan(method="auto")``).
"""
