# kpdd image: CLI, API, generation workers, Flower, and (EXTRAS=train) the GPU trainer.
#
#   docker build -t kpdd .                                  # from PyPI, on python:3.11-slim
#   docker build -t kpdd-trainer --build-arg EXTRAS=train . # + torch, transformers, DeepSpeed
#
# Offline (the stack test, scripts/stack/build_images.sh): the build context is a folder of wheels
# built on the host beforehand (`pip wheel`, the project's own wheel among them) instead of the
# source tree, BASE_IMAGE is any Debian-like image with python3 and its venv module, and pip
# installs with --no-index: nothing inside the build needs the network.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Extras of the project to install: "" (services and workers) or "train" (the trainer).
ARG EXTRAS=""
# Torch goes in first for the trainer so pip does not pick another build (the PyPI wheel for Linux
# is the CUDA one; the host's NVIDIA driver comes in through the container toolkit), and DeepSpeed
# then builds against it (--no-build-isolation, as scripts/setup.sh does).
ARG TORCH_SPEC="torch==2.13.0"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/kpdd PATH=/opt/kpdd/bin:$PATH \
    KPDD_DATA_DIR=/data KPDD_DATASETS_DIR=/datasets

COPY . /src
RUN set -eu; \
    python3 -m venv /opt/kpdd; \
    target="kpdd${EXTRAS:+[$EXTRAS]}"; \
    if [ -f /src/pyproject.toml ]; then \
      src="/src${EXTRAS:+[$EXTRAS]}"; \
      case ",$EXTRAS," in \
        *,train,*) pip install --upgrade pip "setuptools>=77" wheel "$TORCH_SPEC" \
                   && pip install --no-build-isolation "$src" ;; \
        *) pip install "$src" ;; \
      esac; \
    else \
      ls /src/kpdd-*.whl >/dev/null || { echo "no kpdd wheel in the build context: build from the repository root or from a folder of wheels" >&2; exit 2; }; \
      pip install --no-index --find-links /src "$target"; \
    fi; \
    rm -rf /src; \
    useradd --create-home --uid 10001 kpdd; \
    mkdir -p /data/snapshots /datasets; \
    chown -R kpdd:kpdd /data

# The API, Flower and the trainer run as this user; the generation worker runs as root in its
# container so its sandbox gets every isolation layer (docker-compose.yml, docs/sandbox.md).
USER kpdd
WORKDIR /home/kpdd
ENTRYPOINT ["kpdd"]
CMD ["--help"]
