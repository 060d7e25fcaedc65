# hide on a GPU node: `accelerate launch train.py` inside this image.
#   docker build -t hide .
#   docker run --gpus all --ipc=host -v /data:/data hide \
#       python tools/convert.py /data/imagenet/train /data/shards/in1k-train --format webdataset
#
# The CUDA *devel* image: DeepSpeed compiles its fused ops just in time with nvcc.
# torch's PyPI wheels bring their own CUDA 13 libraries; nvidia-dali-cuda130 matches them.
ARG BASE=nvidia/cuda:13.0.2-devel-ubuntu24.04
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST="8.0;9.0"

# Python, a compiler, GNU tar (DALI's wds2idx) and the libraries FFCV builds against.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git tar make \
        pkg-config libopencv-dev libturbojpeg0-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/hide
COPY . .
# The same install step as `make demo` / `make test` on any machine (pinned by constraints.txt).
RUN make install VENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH

CMD ["accelerate", "launch", "train.py"]
