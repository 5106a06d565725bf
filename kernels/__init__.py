"""Stage 6: Triton kernels (installed as ``ssm_tutor.kernels``). Filled in by the stage-6 work."""
