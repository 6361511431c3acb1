# `serve`, the KServe v2 server, on the ONNX Runtime library of PyPI's onnxruntime
# wheel (loaded at run time). Build from the repository root:
#   cargo xtask image build --only serve

FROM rust:1.92.0-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3-venv protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
# The onnxruntime pin of xtask/requirements.txt (ort's api level needs >= 1.32).
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir onnxruntime==1.32.0 \
 && mkdir -p /opt/onnxruntime/lib \
 && cp /opt/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.* /opt/onnxruntime/lib/libonnxruntime.so
ENV CARDET_ORT_DYLIB_DEFAULT=/opt/onnxruntime/lib/libonnxruntime.so
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p serve \
 && cp target/release/serve /usr/local/bin/serve

FROM debian:bookworm-20251117-slim AS runtime
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/onnxruntime/lib/libonnxruntime.so /opt/onnxruntime/lib/libonnxruntime.so
COPY --from=build /usr/local/bin/serve /usr/local/bin/serve
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cardet \
 && mkdir -p /models && chown cardet /models
USER 10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["serve"]
CMD ["--model-repository=/models"]
