# stacsr image: the library and CLI on Python 3.11, for Ray head and worker pods.
# CPU by default; a GPU variant replaces the CPU torch wheel:  docker build --build-arg TORCH_VARIANT=cu128 .
# (Built by operators; this repository's CI has no Docker engine. The full cluster set-up is issue 5.)
FROM python:3.11-slim-bookworm

ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR \
    GDAL_HTTP_MAX_RETRY=5 \
    GDAL_HTTP_RETRY_DELAY=0.5 \
    GDAL_HTTP_MULTIRANGE=YES \
    GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES \
    VSI_CACHE=TRUE

RUN useradd --create-home --uid 1000 ray
WORKDIR /opt/stacsr
COPY pyproject.toml README.md ./
COPY stacsr ./stacsr
RUN pip install --index-url https://download.pytorch.org/whl/${TORCH_VARIANT} torch==2.13.0 \
 && pip install .

USER ray
WORKDIR /home/ray
ENTRYPOINT ["stacsr"]
CMD ["--help"]
