# Build a static binary, then run it as a non-root user with its data in a
# volume.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/kvsse . && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kvsse /kvsse
COPY --from=build --chown=65532:65532 /out/data /data
ENV KVSSE_ADDR=0.0.0.0:8080 KVSSE_DATA=/data
VOLUME /data
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/kvsse"]
