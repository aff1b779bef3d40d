# torchdoctor service image (CPU). Untrusted code it audits runs in the sandbox image
# (torchdoctor/sandbox/Dockerfile), never in this one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 torchdoctor

WORKDIR /opt/torchdoctor
# The CPU build of torch: the service only reads code; GPU work happens in the sandbox image.
RUN pip install torch==2.8.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY torchdoctor ./torchdoctor
RUN pip install ".[llm,linters,docker]"

USER torchdoctor
ENV TORCHDOCTOR_HOME=/home/torchdoctor/.cache/torchdoctor
WORKDIR /work
ENTRYPOINT ["torchdoctor"]
CMD ["--help"]
