import re
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="raw2rgb",
    version=re.search(r'__version__ = "(.+?)"', Path(__file__).with_name("raw2rgb").joinpath("__init__.py")
                      .read_text()).group(1),  # one place: raw2rgb/__init__.py
    description="Learned RAW-to-RGB mapping (saliency-map-aided GAN, Zhao et al. 2019): dataset builder, "
    "two-stage GAN trainer, seam-free full-resolution converter, evaluation and export",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["raw2rgb", "raw2rgb.*"]),
    install_requires=[
        "numpy>=1.24",
        "torch>=2.5",  # torch.uint16, torch.amp.GradScaler (2.3), torch.OutOfMemoryError (2.5)
        "torchvision>=0.20",
        "rawpy>=0.19",
        "imageio>=2.31",
        "pillow>=10",
        "scipy>=1.10",
        "imagecodecs>=2023.9.18",  # libpng for 16-bit 4-channel PNG
        "tifffile>=2023.7.10",  # DNG tags; the virtual camera's DNG writer
        "scikit-image>=0.21",
        "opencv-python-headless>=4.8",  # alignment: SIFT, MAGSAC++, warps
        "h5py>=3.9",
        "click>=8.1",
        "joblib>=1.3",
        "tqdm>=4.65",
        "tensorboard>=2.14",  # training scalars
        "matplotlib>=3.7",  # the run report's training curve
    ],
    extras_require={
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        "dev": ["pytest>=7.4", "pytest-timeout>=2.1", "pypng>=0.20220715", "ruff>=0.4", "onnx>=1.16",
                "onnxscript>=0.2", "onnxruntime>=1.18", "dask[distributed]>=2023.9"],
        "dist": ["dask[distributed]>=2023.9"],
    },
    entry_points={"console_scripts": ["raw2rgb=raw2rgb.cli:main"]},
)
