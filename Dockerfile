# torchdoctor service image (CPU). Untrusted code it audits runs in the sandbox image
# (torchdoctor/sandbox/Dockerfile), never in this one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 torchdoctor

WORKDIR /opt/torchdoctor
# Every version comes from constraints.txt (scripts/update-constraints.sh), torch included.
COPY constraints.txt ./
# The CPU build of torch: the service only reads code; GPU work happens in the sandbox image.
RUN pip install -c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY torchdoctor ./torchdoctor
RUN pip install -c constraints.txt ".[llm,linters,docker,api,ray]"

USER torchdoctor
# The REST API by default (`docker run IMAGE audit ...` still runs the CLI). State (SQLite,
# checkpoints, submitted code) lives under TORCHDOCTOR_HOME: mount a volume there, or point
# TORCHDOCTOR_DATABASE_URL at PostgreSQL (docker-compose.yml).
ENV TORCHDOCTOR_HOME=/home/torchdoctor/.cache/torchdoctor \
    TORCHDOCTOR_HOST=0.0.0.0 \
    TORCHDOCTOR_PORT=8000
WORKDIR /work
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["torchdoctor"]
CMD ["serve"]
