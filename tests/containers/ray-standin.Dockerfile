# A local stand-in for rayproject/ray:<version>-py311, which cannot be pulled on these machines.
# Built FROM the Python stand-in (../shared/containers/base-image.sh) and tagged with the public
# name, so Dockerfile.serve builds unchanged. Like the real image it has Ray (the same pinned
# version, from PyPI), Python 3.11 as `python`, wget and bash, and runs as user ray (uid 1000,
# gid 100) with a user-writable Python environment at /home/ray/anaconda3.
# It differs in: a venv instead of Anaconda, Debian's Python 3.11.2 instead of conda's, no
# CUDA/extra tools (e.g. no sudo), and only ray[serve] installed (the real image has ray[all]).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG RAY_VERSION
RUN test -n "${RAY_VERSION}" \
 && useradd --create-home --home-dir /home/ray --uid 1000 --gid 100 --shell /bin/bash ray
USER 1000
ENV PATH=/home/ray/anaconda3/bin:$PATH
RUN python -m venv /home/ray/anaconda3 \
 && pip install --no-cache-dir "ray[serve]==${RAY_VERSION}"
WORKDIR /home/ray
