# Redis from Debian's package on the locally built base image (no image registry needed).
# Like the official redis image: `redis-server [options]` in /data, protected mode off when
# no config file is given (the service is reached over the compose network, never published).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$1\" = redis-server ]; then shift; exec redis-server --protected-mode no \"$@\"; fi; exec \"$@\"", "--"]
CMD ["redis-server"]
