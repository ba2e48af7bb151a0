"""PointINS-JAX: instance-aware self-supervised pretraining for 3D point clouds."""
from setuptools import find_packages, setup

# Versions pinned to what pip resolves on Python 3.11 (jax 0.10.x is the last
# line that supports 3.11); see ../shared/reference/jax_stack_and_style.md A.0.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "scipy>=1.13",
    "scikit-learn>=1.5",  # HDBSCAN (label-free prior, unsupervised baseline)
    "plyfile>=1.0",  # ScanNet .ply meshes
    "matplotlib>=3.8",
    "plotly>=5.20",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
]

EXTRAS = {
    # Lowering Pallas kernels for CUDA on a CPU-only machine (tests) needs the
    # plugin without its `with-cuda` extra, so no NVIDIA libraries are pulled.
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "jax-cuda12-plugin==0.10.2",
        "nbclient>=0.10",
        "nbformat>=5.9",
        "ipykernel>=6.29",
    ],
    "cuda12": ["jax[cuda12]==0.10.2"],
    "torch": ["torch"],  # only for importing Pointcept/Sonata checkpoints
}

setup(
    name="pointins-jax",
    version="0.1.0",
    description="PointINS instance-aware self-supervised pretraining of PTv3 in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["pointins_jax*", "kernels*", "configs*", "experiments*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
