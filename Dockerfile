# One image for the three m2grl services (ingest, trainer, rpc); compose.yaml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    TORCH_EXTENSIONS_DIR=/opt/m2grl/kernels
WORKDIR /app

# The trainer's step kernel (train/csrc/) and the id table (m2grl/csrc/) are compiled with
# these, at build time below.
RUN apt-get update && apt-get install -y --no-install-recommends g++ ninja-build \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, so code changes do not reinstall torch.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN pip install --no-deps --no-build-isolation . && python -m m2grl.protos_build && python -m m2grl.train.kernel \
    && python -m m2grl.idtable

# The builds' directories hold the locks a rebuild would take; the service user owns them.
RUN useradd --system --home /var/lib/m2grl --create-home m2grl && chown -R m2grl /opt/m2grl/kernels
USER m2grl
WORKDIR /var/lib/m2grl
CMD ["m2grl", "--help"]
