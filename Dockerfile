# The fleetcloak image for docker-compose.yml: `fleetcloak` is the entrypoint, so a
# service's command is a subcommand (worker, topics, simulate, ...).
FROM python:3.11-slim AS build
# The decoder's batch path is a C extension: the build stage has the compiler, the
# final image does not.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --create-home --uid 10001 fleetcloak
USER fleetcloak
WORKDIR /home/fleetcloak
ENV PYTHONUNBUFFERED=1
EXPOSE 6066
ENTRYPOINT ["fleetcloak"]
CMD ["--help"]
