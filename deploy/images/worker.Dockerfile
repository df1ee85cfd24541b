# syntax=docker/dockerfile:1
# The reapi worker image for Docker mode: `reapi worker` runs each action in a container of the
# action's image through a Docker daemon it reaches on /var/run/docker.sock (the host's, in
# compose; a docker-in-docker sidecar's, in Kubernetes).
#
#   docker build -f deploy/images/worker.Dockerfile -t reapi-worker:0.1.0 .     (from the repo root)
#
# The daemon resolves bind-mount sources in its own filesystem, so the worker's work dir, its
# TMPDIR (runner sockets) and XDG_CACHE_HOME (the runner binary) must be on a volume mounted at
# the same path in the worker and in the daemon: see deploy/compose and the docker-in-docker overlay.

FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
# gcc and static glibc: the worker compiles the sandbox runner (worker/runner/runner.c) at start
# into XDG_CACHE_HOME, which must be a path the Docker daemon sees too (see above).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/reapi
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/worker/runner/runner.c ./worker/runner/runner.c
# Root: the worker hands input trees to the action user (chown) and talks to the Docker socket.
USER root
EXPOSE 9090
ENTRYPOINT ["node", "/opt/reapi/dist/bin/reapi.js"]
CMD ["worker", "--sandbox", "docker"]
