# One image for every gptjobs service (api, workers, migrate); docker-compose picks the command.
# CPU torch by default; for CUDA workers build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GPTJOBS_DATA_DIR=/data

WORKDIR /app
# torch first and alone: the largest layer, and the one that changes least often
RUN pip install --index-url "$TORCH_INDEX" torch
COPY pyproject.toml README.md ./
COPY gpt ./gpt
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install ".[postgres,s3]"

# Celery warns when run as root, and nothing here needs root.
RUN useradd --create-home --uid 1000 gptjobs && mkdir -p /data && chown gptjobs /data
USER gptjobs
VOLUME /data
EXPOSE 8000
CMD ["gptjobs", "serve", "--host", "0.0.0.0", "--port", "8000"]
