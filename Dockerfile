# bids-agquant BIDS App image.
#
#   docker build -t bids-agquant:0.1.0 .
#   docker run --rm --network none -v /data/bids:/data:ro -v /data/out:/out \
#       bids-agquant:0.1.0 /data /out participant --participant-label 01
#
# BASE_IMAGE may be any Debian 12 (bookworm) based image with or without Python: the official
# Python 3.11 slim image (default, Python in /usr/local) or a plain Debian root filesystem
# (Debian's own python3 is 3.11 and is installed when missing). CI, which cannot pull from
# Docker Hub, builds with `--build-arg BASE_IMAGE=localhost/debian:bookworm` made by
# .ci/base_image.sh (debootstrap + podman import); see tests/system/test_containers.py.
# Dependencies are pinned by constraints.txt; nothing is downloaded at run time.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
# Debian's python3 on a bare Debian base; nothing to do on the official Python image.
# Versions come from the pinned Debian release of the base image (see .hadolint.yaml, DL3008).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'

# ---------------------------------------------------------------------------------------------
FROM base AS build
# Behind a TLS-intercepting proxy, mount its CA bundle into the build and name it here, e.g.
# `-v /etc/ssl/certs/ca-certificates.crt:/run/ci-ca.crt:ro --build-arg PIP_CERT=/run/ci-ca.crt`
# (build time only; not mounted over /etc/ssl/certs, which the ca-certificates package rewrites).
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# The pinned dependencies first, in their own layer: a change in the code does not
# re-download them.
COPY constraints.txt ./
RUN /opt/venv/bin/pip install -r constraints.txt
# Then the application (no test extras); its requirements are already satisfied.
COPY pyproject.toml README.md ./
COPY bids_agquant ./bids_agquant
RUN /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/pip check

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="bids-agquant" \
      org.opencontainers.image.description="BIDS App: gadolinium nanoparticle (AGuIX) uptake maps and per-lesion statistics in brain metastases from quantitative T1 MRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.authors="bids-agquant developers" \
      org.opencontainers.image.url="https://pypi.org/project/bids-agquant/" \
      org.opencontainers.image.source="https://pypi.org/project/bids-agquant/" \
      org.opencontainers.image.documentation="https://pypi.org/project/bids-agquant/" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=build /opt/venv /opt/venv

# Non-root user with a writable HOME. `chmod go=u` (as fMRIPrep does) lets any UID that runs
# the image (`docker run -u`, the host user under Apptainer) use the caches in HOME.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash agquant \
    && mkdir -p /home/agquant/.cache /home/agquant/.config \
    && chown -R agquant:agquant /home/agquant \
    && chmod -R go=u /home/agquant

# MPLCONFIGDIR in /tmp: writable with `--read-only` (tmpfs /tmp) and for any UID; Singularity.def
# makes it per-user because there /tmp is the host's.
# One thread per process by default: Nipype runs processes in parallel (--nprocs) and
# registrations use --omp-nthreads; a single ITK thread also makes ANTs bit-reproducible.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/agquant \
    MPLCONFIGDIR=/tmp/matplotlib \
    MPLBACKEND=Agg \
    NIPYPE_NO_ET=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIDS_AGQUANT_CONTAINER=bids-agquant:${VERSION} \
    BIDS_AGQUANT_CONTAINER_TYPE=docker

USER 1000:1000
# Smoke test of the installed entry points (no network is used by either).
RUN bids-agquant --version \
    && bids-validator-deno --version
WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/bids-agquant"]
CMD ["--help"]
