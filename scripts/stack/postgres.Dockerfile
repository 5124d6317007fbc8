# PostgreSQL from Debian's package on the locally built base image (no image registry needed).
# Speaks the official postgres image's interface: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB,
# PGDATA, a `postgres ...` command, pg_isready for health checks, SIGINT (fast shutdown) to stop.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN mkdir -p "$PGDATA" /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0755 /usr/local/bin/postgres-entrypoint.sh
USER postgres
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
