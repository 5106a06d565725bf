"""ssm_tutor: State Space Models from the equations up to the full Mamba.

One module per stage of the course (the notebook with the same number is its commentary):

=====  ===========================  =============================================
stage  module                       what it builds
=====  ===========================  =============================================
1      ``ssm_tutor.continuous``     the continuous-time SSM x' = Ax + Bu, y = Cx + Du
2      ``ssm_tutor.discretize``     zero-order hold, bilinear and Euler discretisation
3      ``ssm_tutor.convolution``    the LTI convolution view, HiPPO and S4D kernels
4      ``ssm_tutor.selective``      Mamba's selection (S6) and the reference scan
5      ``ssm_tutor.scan``           parallel scans and the fast CPU selective scan
6      ``ssm_tutor.kernels``        the Triton kernel that keeps the state in SRAM
7      ``ssm_tutor.mamba``          the full Mamba language model
8      ``ssm_tutor.train``          training on the Mamba paper's synthetic tasks
9      ``ssm_tutor.costs``          FLOPs, bytes and seconds: the paper's scaling claims, measured
10     ``ssm_tutor.hybrid``         recall (MQAR), Jamba-style hybrids; ``bidirectional``
11     ``ssm_tutor.ssd``            Mamba-2's state space duality: the SSD scan in three forms
11     ``ssm_tutor.mamba2``         the Mamba-2 language model
=====  ===========================  =============================================

Modules are imported on demand (``import ssm_tutor.scan``), so importing the
package itself is cheap and never pulls in Triton.
"""

__version__ = "0.1.0"

from ssm_tutor.check import check  # noqa: E402  (the one helper every notebook uses)

__all__ = ["check", "__version__"]
