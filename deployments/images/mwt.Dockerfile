# The trainer, `mwt`, on libtorch from PyPI's torch wheel (the CUDA build: the same
# image trains on CPU with gloo and on GPU with NCCL). Build from the repository root:
#   cargo xtask image build --only mwt

FROM rust:1.92.0-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3-venv libgloo-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# The torch pin of xtask/requirements.txt: tch 0.26 links against torch 2.13.0.
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0
ENV LIBTORCH=/opt/venv/lib/python3.11/site-packages/torch \
    LIBTORCH_BYPASS_VERSION_CHECK=0
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mwt \
 && cp target/release/mwt /usr/local/bin/mwt

FROM python:3.11.7-slim-bookworm AS runtime
# Only torch's shared libraries (and the CUDA libraries they load) travel, at the
# same path the binary's rpath names.
COPY --from=build /opt/venv/lib/python3.11/site-packages/torch/lib /opt/venv/lib/python3.11/site-packages/torch/lib
COPY --from=build /opt/venv/lib/python3.11/site-packages/nvidia /opt/venv/lib/python3.11/site-packages/nvidia
COPY --from=build /usr/lib/x86_64-linux-gnu/libgloo* /usr/lib/x86_64-linux-gnu/
COPY --from=build /usr/local/bin/mwt /usr/local/bin/mwt
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cardet
USER 10001
WORKDIR /home/cardet
ENTRYPOINT ["mwt"]
CMD ["--help"]
