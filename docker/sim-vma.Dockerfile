# sim-vma
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sim-vma --bin sim-vma

FROM debian:bookworm-slim
COPY --from=build /src/target/release/sim-vma /usr/local/bin/
COPY scenarios /scenarios
EXPOSE 8081 8091
ENTRYPOINT ["sim-vma", "--listen", "0.0.0.0:8081", "--control", "0.0.0.0:8091"]
