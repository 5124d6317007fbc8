# kpdd service image: CLI, workers and the API. Generation only: no torch in this image
# (the trainer image adds the `train` extra on a CUDA base, see README "Training on GPUs").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY db ./db
COPY services ./services
COPY workers ./workers
COPY training ./training
RUN pip install . && useradd --create-home --uid 10001 kpdd

USER kpdd
ENV KPDD_DATA_DIR=/home/kpdd/data
ENTRYPOINT ["kpdd"]
CMD ["--help"]
