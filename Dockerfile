# sparse-nas: one image for the API, the job worker and the Ray nodes (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SPARSE_NAS_DATA_DIR=/data \
    SPARSE_NAS_STATE_DIR=/state

WORKDIR /app

# The CPU build of torch first, from PyTorch's own index: the default index serves the
# CUDA build, gigabytes of packages no trial here uses.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Then the package with its pinned dependencies; torch is already satisfied.
COPY pyproject.toml README.md ./
COPY api ./api
COPY sparse_nas ./sparse_nas
COPY search_spaces ./search_spaces
COPY hw_models ./hw_models
RUN pip install .

RUN useradd --create-home --uid 1000 sparse \
    && mkdir -p /data /state \
    && chown sparse:sparse /data /state
USER sparse

EXPOSE 8000
CMD ["sparse-nas", "serve"]
