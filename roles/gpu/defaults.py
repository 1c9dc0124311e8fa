"""Defaults of role gpu; the plan's settings arrive as host data `podium_gpu`."""

DEFAULTS = {
    # NVIDIA's hosts; with `source: mirror` the artifact mirror keeps the same paths under /nvidia.
    "gpu_cuda_repository": "https://developer.download.nvidia.com/compute/cuda/repos",
    "gpu_toolkit_repository": "https://nvidia.github.io/libnvidia-container/stable/deb",
    "gpu_toolkit_key": "https://nvidia.github.io/libnvidia-container/gpgkey",
    # NVIDIA's CUDA repository signing key (in each distribution's folder of the repository).
    "gpu_cuda_key": "3bf863cc.pub",
    "gpu_debian_repository": "http://deb.debian.org/debian",
    "gpu_keyrings": "/etc/apt/keyrings",
    # Where each rendered file of templates/gpu/ goes.
    "gpu_files": {
        "blacklist-nouveau.conf": "/etc/modprobe.d/podium-blacklist-nouveau.conf",
        "nvidia-branch.pref": "/etc/apt/preferences.d/podium-nvidia-branch",
    },
}
