# The tools around the model: `produce`, `sink`, `upload_model_to_minio` and
# `triton_client`. Build from the repository root:
#   cargo xtask image build --only tools

FROM rust:1.92.0-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p produce -p sink -p upload_model_to_minio -p triton_client \
 && cp target/release/produce target/release/sink target/release/upload_model_to_minio \
       target/release/triton_client /usr/local/bin/

FROM debian:bookworm-20251117-slim AS runtime
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/produce /usr/local/bin/sink /usr/local/bin/upload_model_to_minio /usr/local/bin/triton_client /usr/local/bin/
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cardet
USER 10001
WORKDIR /home/cardet
CMD ["sink", "--help"]
