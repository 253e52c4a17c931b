"""NCA rollout kernels (imported as `nca_datagen.kernels`): a plain-torch reference and faster backends.

Every backend takes the same arguments and returns bit-identical results; `nca_datagen.rollout` picks one.
"""
