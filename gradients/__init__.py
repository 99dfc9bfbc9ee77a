"""gradients: the torch side of Influence Distillation.

Per-sample gradients, Randomized Hadamard projections, JVP embeddings, landmark
influence propagation and the end-to-end selection pipeline.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
