# oma-api and job-recovery
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p oma --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/oma-api /src/target/release/job-recovery /usr/local/bin/
ENV OMA_LISTEN=0.0.0.0:8082
EXPOSE 8082
HEALTHCHECK CMD curl -fsS http://localhost:8082/health || exit 1
ENTRYPOINT ["oma-api"]
