# One image for the three m2grl services (ingest, trainer, rpc); compose.yaml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN pip install --no-deps --no-build-isolation . && python -m m2grl.protos_build

RUN useradd --system --home /var/lib/m2grl --create-home m2grl
USER m2grl
WORKDIR /var/lib/m2grl
CMD ["m2grl", "--help"]
